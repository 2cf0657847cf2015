"""{% field_widget %}: a form field's input tied to its hint and errors for screen readers."""

from __future__ import annotations

from django import forms, template
from django.utils.safestring import SafeString

register = template.Library()


@register.simple_tag
def field_widget(field: forms.BoundField, **attrs: str | bool) -> SafeString:
    """The widget with aria-describedby naming its hint and error list; on error also
    aria-invalid and autofocus (the first such field in the page gets the focus).

    The ids match templates/includes/field.html: `<id>-hint` and `<id>-errors`.
    """
    described = []
    if field.help_text:
        described.append(f"{field.auto_id}-hint")
    if field.errors:
        described.append(f"{field.auto_id}-errors")
        attrs["aria-invalid"] = "true"
        # Without JavaScript: the browser puts the cursor on the first field to fix.
        attrs["autofocus"] = True
    if described:
        attrs["aria-describedby"] = " ".join(described)
    if field.field.required:
        attrs["required"] = "required"
    return field.as_widget(attrs=attrs)
