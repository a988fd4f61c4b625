"""Write the multimodal demo datasets: data/mllm_demo.json, data/mllm_video_demo.json and their media.

The pictures are flat shapes drawn with Pillow and the clips are a few frames of a moving or
changing shape encoded with PyAV, so that every answer in the data describes exactly what is drawn.
Running the script again rewrites the same files (same Pillow and PyAV versions give the same bytes).

Run: .venv/bin/python scripts/make_mllm_demo.py   (needs the `vision` extra: Pillow and PyAV)
"""

from __future__ import annotations

import json
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
MEDIA = "mllm_demo_data"  # the media folder, relative to the data folder

WHITE, GREY = (255, 255, 255), (230, 230, 230)
COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 70), "yellow": (240, 200, 30),
           "purple": (140, 60, 180)}

# Each picture: (file, size, background, [(shape, colour, box)]); a box is (left, top, right, bottom).
PICTURES = [
    ("1.png", (112, 112), WHITE, [("circle", "red", (12, 12, 52, 52))]),
    ("2.png", (112, 112), WHITE, [("square", "blue", (30, 30, 82, 82))]),
    ("3.png", (112, 112), WHITE, [("triangle", "green", (20, 24, 92, 88))]),
    ("4.png", (168, 112), GREY, [("circle", "yellow", (16, 28, 72, 84)), ("square", "purple", (96, 28, 152, 84))]),
]

IMAGE_ROWS = [
    {"messages": [
        {"role": "user", "content": "<image>What is in this picture?"},
        {"role": "assistant", "content": "A red circle on a white background."},
        {"role": "user", "content": "Where in the picture is the circle?"},
        {"role": "assistant", "content": "In the top left corner."},
    ], "images": [f"{MEDIA}/1.png"]},
    {"messages": [
        {"role": "user", "content": "<image>What colour is the shape?"},
        {"role": "assistant", "content": "Blue. It is a blue square in the middle of the picture."},
    ], "images": [f"{MEDIA}/2.png"]},
    {"messages": [
        {"role": "user", "content": "<image><image>How are these two pictures different?"},
        {"role": "assistant", "content": "The first picture shows a green triangle pointing up, the second a red "
                                         "circle in the top left corner. Both have a white background."},
    ], "images": [f"{MEDIA}/3.png", f"{MEDIA}/1.png"]},
    {"messages": [
        {"role": "user", "content": "<image>Describe this picture."},
        {"role": "assistant", "content": "Two shapes on a light grey background: a yellow circle on the left and "
                                         "a purple square on the right."},
        {"role": "user", "content": "Which shape is bigger?"},
        {"role": "assistant", "content": "They are the same size."},
    ], "images": [f"{MEDIA}/4.png"]},
]

# Each clip: (file, shape, colour of each frame, box of each frame). 8 frames at 4 frames a second.
FRAMES, FPS, CLIP_SIZE = 8, 4, 112
CLIPS = [
    ("1.mp4", "square", ["red"] * FRAMES, [(4 + 10 * i, 40, 36 + 10 * i, 72) for i in range(FRAMES)]),
    ("2.mp4", "circle", ["blue"] * FRAMES, [(40, 4 + 10 * i, 72, 36 + 10 * i) for i in range(FRAMES)]),
    ("3.mp4", "triangle", ["green"] * (FRAMES // 2) + ["yellow"] * (FRAMES // 2), [(24, 24, 88, 88)] * FRAMES),
]

VIDEO_ROWS = [
    {"messages": [
        {"role": "user", "content": "<video>What happens in this video?"},
        {"role": "assistant", "content": "A red square moves from the left side to the right side of a white "
                                         "background."},
    ], "videos": [f"{MEDIA}/1.mp4"]},
    {"messages": [
        {"role": "user", "content": "<video>Which way does the ball move?"},
        {"role": "assistant", "content": "The blue ball falls from the top of the picture to the bottom."},
        {"role": "user", "content": "Does it change colour?"},
        {"role": "assistant", "content": "No, it stays blue the whole time."},
    ], "videos": [f"{MEDIA}/2.mp4"]},
    {"messages": [
        {"role": "user", "content": "<video>Describe the video."},
        {"role": "assistant", "content": "A triangle in the middle of a white background turns from green to "
                                         "yellow halfway through. It does not move."},
    ], "videos": [f"{MEDIA}/3.mp4"]},
]


def draw(size, background, shapes):
    """An RGB picture of flat shapes."""
    from PIL import Image, ImageDraw

    picture = Image.new("RGB", size, background)
    pen = ImageDraw.Draw(picture)
    for shape, colour, (left, top, right, bottom) in shapes:
        fill = COLOURS[colour]
        if shape == "circle":
            pen.ellipse((left, top, right, bottom), fill=fill)
        elif shape == "square":
            pen.rectangle((left, top, right, bottom), fill=fill)
        else:  # a triangle pointing up
            pen.polygon([((left + right) // 2, top), (left, bottom), (right, bottom)], fill=fill)
    return picture


def write_clip(path: Path, shape: str, colours, boxes) -> None:
    """An H.264 MP4 of one shape per frame; single-threaded and bit-exact, so the bytes repeat."""
    import av
    from av.codec.context import Flags

    with av.open(str(path), mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=FPS, options={"crf": "28", "preset": "veryslow",
                                                                   "tune": "stillimage"})
        stream.width = stream.height = CLIP_SIZE
        stream.pix_fmt = "yuv420p"
        stream.thread_count = 1
        stream.codec_context.flags |= Flags.bitexact
        for colour, box in zip(colours, boxes, strict=True):
            picture = draw((CLIP_SIZE, CLIP_SIZE), WHITE, [(shape, colour, box)])
            for packet in stream.encode(av.VideoFrame.from_image(picture)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_json(path: Path, rows) -> None:
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def main(data_dir: Path = DATA_DIR) -> None:
    """Write both datasets' JSON files and the media they name under `data_dir`."""
    media = data_dir / MEDIA
    media.mkdir(parents=True, exist_ok=True)
    for name, size, background, shapes in PICTURES:
        # No optimize pass: zlib's default settings keep the bytes stable.
        draw(size, background, shapes).save(media / name, format="PNG")
    for name, shape, colours, boxes in CLIPS:
        write_clip(media / name, shape, colours, boxes)
    write_json(data_dir / "mllm_demo.json", IMAGE_ROWS)
    write_json(data_dir / "mllm_video_demo.json", VIDEO_ROWS)


if __name__ == "__main__":
    main()
