"""The browser fixture itself: Debian's Chromium renders a page of the live portal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.services


def test_chromium_renders_the_admin_login_of_the_live_portal(
    page: Any, live_server: Any, tmp_path: Path
) -> None:
    response = page.goto(f"{live_server.url}/admin/login/")

    assert response is not None and response.status == 200
    assert page.locator("input[name=username]").is_visible()
    page.screenshot(path=str(tmp_path / "admin-login.png"))
    assert (tmp_path / "admin-login.png").stat().st_size > 1000
