// mailportal: optional help on the registration pages; every page works without it.
//
// A mail client fills the registration URL without encoding (docs/registration.md), so a
// "#" typed in a name starts the URL's fragment, which the browser never sends: the server
// saw the names only up to it. Put the rest back into the fields, unless the person has
// already typed there. Same reading as providers.provisioner.parse_registration_query.
(function () {
  "use strict";
  var fragment = window.location.hash.slice(1);
  var form = document.querySelector("form[data-restore-fragment]");
  if (!fragment || !form) { return; }
  var names = ["email", "first_name", "last_name"];
  var decode = function (text) {
    try { return decodeURIComponent(text); } catch (error) { return text; }
  };
  // "&" starts a parameter only when "name=" follows it.
  var parts = fragment.split(/&(?=[A-Za-z_][A-Za-z0-9_.-]*=)/);
  // The first part continues the last parameter the server did see.
  var seen = window.location.search.slice(1).split(/&(?=[A-Za-z_][A-Za-z0-9_.-]*=)/);
  var last = seen.length ? seen[seen.length - 1].split("=")[0] : "";
  var field = function (name) { return form.querySelector("input[name='" + name + "']"); };
  if (names.indexOf(last) > 0 && field(last)) {
    field(last).value = field(last).value + "#" + decode(parts[0]);
  }
  parts.slice(1).forEach(function (part) {
    var at = part.indexOf("=");
    var name = part.slice(0, at);
    var input = names.indexOf(name) > 0 ? field(name) : null;
    if (input && !input.value) { input.value = decode(part.slice(at + 1)).trim(); }
  });
})();
