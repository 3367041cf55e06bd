"""The page at / in headless Debian chromium: upload a photo and see its label; upload a text
file and see the error. Screenshots go to test-artifacts/."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser import chromium_page
from tests.serving.conftest import BentoServer
from tests.serving.images import encode, picture

pytestmark = [pytest.mark.browser, pytest.mark.services]


@pytest.fixture
def page(bento_server: BentoServer):
    with chromium_page(900, 900) as page:
        page.goto(bento_server.url + "/")
        yield page


def _photo(tmp_path: Path) -> Path:
    """A real photo from ../shared when present, else a generated JPEG."""
    sample = Path(__file__).resolve().parents[2].parent / "shared/data/petimages-sample/cat"
    photos = sorted(sample.glob("*.jpg")) if sample.is_dir() else []
    if photos:
        return photos[0]
    path = tmp_path / "generated.jpg"
    path.write_bytes(encode(picture(1), "JPEG"))
    return path


def test_upload_photo_shows_label(page, bento_server: BentoServer, tmp_path: Path,
                                  artifacts_dir: Path) -> None:
    page.wait_for_function(
        "document.getElementById('model-version').textContent.includes('v')")
    assert f"v{bento_server.version}" in page.text_content("#model-version")
    page.set_input_files("#file", str(_photo(tmp_path)))
    page.wait_for_selector("#result:not([hidden])", timeout=30_000)
    assert page.text_content("#label") in ("cat", "dog")
    assert "% confident" in page.text_content("#confidence")
    assert page.is_visible("#preview")
    assert page.is_hidden("#error")
    # the answer's Grad-CAM heatmap (POST /explain) shows under it, for the same label
    page.wait_for_selector("#explain:not([hidden])", timeout=60_000)
    page.wait_for_function("document.getElementById('heatmap').naturalWidth > 0")
    note = page.text_content("#explain-note")
    assert f"“{page.text_content('#label')}”" in note and "torch-fp32" in note
    page.screenshot(path=str(artifacts_dir / "serving-web-page-photo.png"), full_page=True)


def test_upload_text_file_shows_error(page, tmp_path: Path, artifacts_dir: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("this is not a picture\n")
    page.set_input_files("#file", str(text))
    page.wait_for_selector("#error:not([hidden])", timeout=30_000)
    message = page.text_content("#error")
    assert "notes.txt" in message and "not a recognised image" in message
    assert page.is_hidden("#result")
    page.screenshot(path=str(artifacts_dir / "serving-web-page-error.png"), full_page=True)
