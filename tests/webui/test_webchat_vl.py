"""`lmforge webchat` with a vision-language model: an uploaded image goes with the next message, in Chromium."""

from __future__ import annotations

import pytest

from tests.webui.test_webchat import chromium_page, messages, running_webchat, send

Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def vl_webchat(tiny_vl_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("webchat-vl")
    with running_webchat(tiny_vl_dir, tmp, "template=qwen2_vl", "max_new_tokens=6") as server:
        yield server


def expected_answer(model_dir, question: str, image=None) -> str:
    """What the engine answers (greedy) for the question, with and without the image."""
    from lmforge.chat.base import Media
    from lmforge.chat.hf_engine import HFEngine
    from lmforge.config import parse_config

    engine = HFEngine(parse_config("chat", [f"model_name_or_path={model_dir}", "template=qwen2_vl",
                                            "do_sample=false", "max_new_tokens=6"]))
    media = Media(images=(str(image),)) if image else None
    return engine.chat([{"role": "user", "content": question}], media=media).text.strip()


def test_uploaded_image_is_shown_and_answered_about(vl_webchat, tiny_vl_dir, tmp_path):
    from playwright.sync_api import expect

    picture = tmp_path / "red.png"
    Image.new("RGB", (56, 56), "red").save(picture)
    with_image = expected_answer(tiny_vl_dir, "What colour?", picture)
    without = expected_answer(tiny_vl_dir, "What colour?")
    assert with_image != without  # the random model's answer depends on the image: the check below can fail
    with chromium_page(vl_webchat["url"]) as page:
        expect(page.locator("#image")).to_be_visible()
        expect(page.locator("#video")).to_be_visible()
        page.locator("#image input[type=file]").set_input_files(str(picture))
        expect(page.locator("#image img")).to_have_count(1)
        assert send(page, "What colour?", answers=1) == with_image
        # The image shows in the chat, the placeholder does not; the upload is cleared for the next message.
        expect(page.locator("#chatbot [data-testid=user] img")).to_have_count(1)
        assert messages(page, "user")[-1] == "What colour?"
        expect(page.locator("#image img")).to_have_count(0)
        # A follow-up without a new image still sees the first one (it stays in the conversation).
        assert send(page, "What colour?", answers=2)
