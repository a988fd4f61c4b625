"""`lmforge api` with a vision-language model, driven by the `openai` client: `image_url` parts and their limits.

The tiny Qwen2-VL is random, but its greedy answer depends on the pixels: each answer over HTTP must
equal the in-process engine's answer for the same image, and differ from the answer without it.
"""

from __future__ import annotations

import base64
import io
import os
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from .serving import ONE_THREAD, serving

Image = pytest.importorskip("PIL.Image")

QUESTION = "What colour is the shape?"
SETTINGS = ["template=qwen2_vl", "do_sample=false", "max_new_tokens=6"]


def png(color: str, size: tuple[int, int] = (56, 56), noise: bool = False) -> bytes:
    picture = Image.new("RGB", size, color)
    if noise:  # random pixels do not compress: a file of about 3 bytes per pixel
        picture = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def ask(url: str, text: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    (root / "red.png").write_bytes(png("red"))
    (root / "big.png").write_bytes(png("white", (120, 120), noise=True))
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.png").write_bytes(png("red"))
    (root / "link.png").symlink_to(outside / "secret.png")
    return root


@pytest.fixture(scope="module")
def vl_server(tiny_vl_dir, media_dir, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("api-vl") / "server.log"
    env = {**ONE_THREAD, "API_MEDIA_DIR": str(media_dir), "API_MAX_IMAGES": "2", "API_MAX_IMAGE_BYTES": "20000",
           "API_MAX_IMAGE_PIXELS": "40000", "API_BATCH_WAIT_MS": "300"}
    with serving([f"model_name_or_path={tiny_vl_dir}", *SETTINGS], log_path, env=env) as served:
        yield served


@pytest.fixture(scope="module")
def client(vl_server):
    return openai.OpenAI(base_url=f"{vl_server.base}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def engine(tiny_vl_dir):
    from lmforge.chat.hf_engine import HFEngine
    from lmforge.config import parse_config

    return HFEngine(parse_config("api", [f"model_name_or_path={tiny_vl_dir}", *SETTINGS]))


def expected(engine, image) -> str:
    from lmforge.chat.base import Media

    media = Media(images=(image,)) if image is not None else None
    return engine.chat([{"role": "user", "content": QUESTION}], media=media).text


def content(client, messages, **fields) -> str:
    return client.chat.completions.create(model="m", messages=messages, **fields).choices[0].message.content


def test_a_base64_image_is_seen(client, engine):
    red = expected(engine, {"bytes": png("red")})
    assert red != expected(engine, None)
    assert content(client, ask(data_uri(png("red")))) == red
    streamed = client.chat.completions.create(model="m", messages=ask(data_uri(png("red"))), stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices) == red


def test_images_of_one_batch_reach_their_own_rows(client, engine):
    colours = ["red", "blue", "green", "yellow"]
    want = [expected(engine, {"bytes": png(colour)}) for colour in colours]
    assert len(set(want)) > 1
    with ThreadPoolExecutor(len(colours)) as pool:
        got = list(pool.map(lambda colour: content(client, ask(data_uri(png(colour)))), colours))
    assert got == want  # API_BATCH_WAIT_MS=300: they arrive within one batch window and are generated together


def test_a_file_inside_the_media_folder_is_read(client, engine, media_dir):
    red = expected(engine, str(media_dir / "red.png"))
    assert content(client, ask(str(media_dir / "red.png"))) == red
    assert content(client, ask(f"file://{media_dir / 'red.png'}")) == red
    assert content(client, ask("red.png")) == red  # relative to the media folder


def refusal(client, messages) -> tuple[int, str]:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=messages)
    return err.value.status_code, err.value.body["message"]


@pytest.mark.parametrize(("url", "message"), [
    ("/etc/passwd", "messages[0].content[0].image_url: '/etc/passwd' is outside the folder this server may read "
                    "(API_MEDIA_DIR)."),
    ("../outside/secret.png", "is outside the folder this server may read (API_MEDIA_DIR)."),
    ("link.png", "messages[0].content[0].image_url: 'link.png' is outside the folder this server may read "
                 "(API_MEDIA_DIR)."),
    ("missing.png", "messages[0].content[0].image_url: the file 'missing.png' does not exist in API_MEDIA_DIR."),
    ("https://example.com/cat.png", "messages[0].content[0].image_url: the server does not fetch remote URLs; send "
                                    "the file as a base64 data URI (data:image/png;base64,...)."),
    ("data:image/png;base64,AAAA", "messages[0].content[0].image_url: not a readable image (an unknown format, or "
                                   "damaged data)."),
    ("data:image/png;base64,%%%", "messages[0].content[0].image_url: the data URI's base64 payload is not valid."),
    ("data:text/plain;base64,aGk=", "messages[0].content[0].image_url: the data URI holds 'text/plain', not an "
                                    "image."),
    ("big.png", "messages[0].content[0].image_url: the file is"),
])
def test_bad_image_urls_are_400s_naming_the_part(client, url, message):
    status, text = refusal(client, ask(url))
    assert status == 400
    assert message in text


def test_limits_on_size_pixels_and_count(client):
    noisy = png("white", (120, 120), noise=True)
    assert len(noisy) > 20000
    assert refusal(client, ask(data_uri(noisy)))[1] == (
        "messages[0].content[0].image_url: the image is over 20000 bytes (API_MAX_IMAGE_BYTES).")
    assert refusal(client, ask(data_uri(png("red", (300, 300)))))[1] == (
        "messages[0].content[0].image_url: the image is 300x300 pixels; this server takes at most 40000 pixels "
        "(API_MAX_IMAGE_PIXELS).")
    three = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(png("red"))}}] * 3}]
    assert refusal(client, three)[1] == (
        "messages[0].content[2]: a request may carry at most 2 images and videos (API_MAX_IMAGES).")


def test_a_text_model_refuses_images(open_server):
    client = openai.OpenAI(base_url=f"{open_server.base}/v1", api_key="unused", max_retries=0, timeout=120)
    status, text = refusal(client, ask(data_uri(png("red"))))
    assert (status, text) == (400, "Template 'llama3' does not support images. Use a vision-language model with its "
                                   "template (template: qwen2_vl for Qwen2-VL and Qwen2.5-VL).")
