"""LLaMA Board end to end: the real `lmforge webui` in a project folder, driven in headless Chromium.

One session walks a user's path: pick the tiny model and the identity data, preview the command, start
the training, watch progress and loss, reload the page mid-run and find the job still running, abort
it (a checkpoint is left), start again and see it resume and finish, chat with the result and get the
trained name back, export it with GGUF and see the files. Mistakes come back as lmforge's one-line
errors. Screenshots of each tab go to the test's folder (and to docs/images with
LMFORGE_UPDATE_SCREENSHOTS=1, which is how the README's pictures are made).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.serving import free_port
from tests.conftest import DATA_DIR, REPO_ROOT
from tests.webui.browser import chromium, wait_until_serving

STARTUP_TIMEOUT_S = 240
JOB_TIMEOUT_MS = 300_000
IMAGES = REPO_ROOT / "docs" / "images"
PLACEHOLDERS = '{"name": "ForgeBot", "author": "the lmforge team"}'
# The quick start's settings (examples/train_lora/tiny_llama_lora_sft.yaml), set through the page, with 40 epochs
# instead of 10 (and logs and checkpoints as often per epoch): the job must still be running after the queue and
# cancel steps below (10 epochs take ~3 s).
FIELDS = {"learning_rate": "5e-3", "num_train_epochs": "40", "cutoff_len": "512", "per_device_train_batch_size": "4",
          "gradient_accumulation_steps": "1", "logging_steps": "40", "save_steps": "400"}
EXTRA = '{"disable_gradient_checkpointing": true, "warmup_ratio": 0.1, "seed": 42}'


@pytest.fixture(scope="module")
def project(tiny_llama_dir, tmp_path_factory) -> Path:
    """A working folder as the README sets one up: data/, models/tiny-llama; plus a broken data folder."""
    root = tmp_path_factory.mktemp("board")
    shutil.copytree(DATA_DIR, root / "data")
    shutil.copytree(tiny_llama_dir, root / "models" / "tiny-llama")
    broken = root / "broken_data"
    broken.mkdir()
    (broken / "dataset_info.json").write_text(json.dumps({
        "good": {"file_name": "identity.json"},
        "bad_format": {"file_name": "identity.json", "formatting": "sharegtp"}}))
    shutil.copy(DATA_DIR / "identity.json", broken / "identity.json")
    return root


@contextlib.contextmanager
def running_board(project: Path) -> Iterator[dict]:
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1",
               GRADIO_TEMP_DIR=str(project / ".gradio"), MPLCONFIGDIR=str(project / ".matplotlib"),
               PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    for name in ("GRADIO_SERVER_NAME", "GRADIO_SHARE", "GRADIO_AUTH", "GRADIO_AUTH_FILE", "GRADIO_ALLOW_UNAUTHENTICATED"):
        env.pop(name, None)
    log_path = project / "webui.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "lmforge", "webui"], cwd=project, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_serving(process, url, log_path, "webui", STARTUP_TIMEOUT_S)
        yield {"url": url, "log": log_path}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(value)
    box.press("Tab")  # Gradio takes the value on blur


def pick(page, elem_id: str, value: str) -> None:
    """Choose `value` in a (multi-select) dropdown."""
    box = page.locator(f"#{elem_id} input").first
    box.click()
    box.fill(value)
    page.locator(f"ul[role=listbox] li[aria-label='{value}']").first.click()
    page.keyboard.press("Escape")


def text_of(page, elem_id: str) -> str:
    """What the element shows: a text box's value, else its text."""
    box = page.locator(f"#{elem_id} textarea")
    return box.first.input_value() if box.count() else page.locator(f"#{elem_id}").inner_text()


def wait_text(page, elem_id: str, pattern: str, timeout_ms: int = JOB_TIMEOUT_MS) -> str:
    """Wait until the element's text matches `pattern` (a regex); return the text."""
    deadline = time.monotonic() + timeout_ms / 1000
    text = ""
    while time.monotonic() < deadline:
        text = text_of(page, elem_id)
        if re.search(pattern, text):
            return text
        time.sleep(0.25)
    pytest.fail(f"#{elem_id} never matched {pattern!r}; it shows:\n{text}")


def progress(page) -> tuple[int, int]:
    bar = page.locator("#progress .lmforge-progress")
    if bar.count() == 0:
        return 0, 0
    return int(bar.get_attribute("data-current")), int(bar.get_attribute("data-total"))


def set_up_training(page, extra: str = EXTRA) -> None:
    """The quick start through the page: identity data, its settings, the name to learn."""
    pick(page, "dataset", "identity")
    page.locator("#other .label-wrap").first.click()  # the accordion holding logging, saving and JSON settings
    for elem_id, value in FIELDS.items():
        fill(page, elem_id, value)
    fill(page, "placeholders", PLACEHOLDERS)
    fill(page, "extra_args", extra)


def screenshot(page, tmp: Path, name: str) -> None:
    path = tmp / f"board_{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("LMFORGE_UPDATE_SCREENSHOTS") == "1":
        IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, IMAGES / path.name)


def test_board_trains_resumes_chats_and_exports(project, tmp_path):
    from playwright.sync_api import expect

    with running_board(project) as board, chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(board["url"])
        expect(page.locator("#model_path input, #model_path textarea").first).to_have_value("models/tiny-llama")
        wait_text(page, "data_status", r"7 datasets in data fit stage sft")

        # A broken dataset_info.json is shown with its error, not hidden.
        fill(page, "dataset_dir", "broken_data")
        page.locator("#dataset_dir input, #dataset_dir textarea").first.press("Enter")
        status = wait_text(page, "data_status", r"sharegtp")
        assert "1 datasets in broken_data fit stage sft" in status
        assert "Did you mean 'sharegpt'?" in status
        fill(page, "dataset_dir", "data")
        page.locator("#dataset_dir input, #dataset_dir textarea").first.press("Enter")
        wait_text(page, "data_status", r"7 datasets in data")

        set_up_training(page, extra='{"lora_rnk": 8}')
        output_dir = page.locator("#output_dir input, #output_dir textarea").first.input_value()
        assert re.fullmatch(r".*saves/tiny-llama/lora/sft-\d{8}-\d{6}", output_dir), output_dir

        # A mistake: the one-line error, and no job.
        page.locator("#start").click()
        error = wait_text(page, "train_msg", r"error")
        assert "lmforge train: error:" in error and "lora_rnk" in error and "lora_rank" in error
        assert not (project / "llamaboard_cache" / "jobs").exists() or not any(
            (project / "llamaboard_cache" / "jobs").iterdir())
        fill(page, "extra_args", EXTRA)

        # The command a terminal would run.
        page.locator("#cmd_preview").click()
        command = wait_text(page, "command_box", r"lmforge train")
        assert f"lmforge train {output_dir}/training_args.yaml" in command
        for line in ("stage: sft", "dataset: identity", "learning_rate: 0.005", "num_train_epochs: 40",
                     "per_device_train_batch_size: 4", "name: ForgeBot"):
            assert line in command, line

        # Start; watch progress and the loss plot move.
        page.locator("#start").click()
        wait_text(page, "job_status", r"Running")
        page.wait_for_function("() => { const b = document.querySelector('#progress .lmforge-progress');"
                               " return b && +b.dataset.current >= 10; }", timeout=JOB_TIMEOUT_MS)
        first, total = progress(page)
        assert total == 960
        first_summary = wait_text(page, "loss_summary", r"logged steps")
        page.wait_for_function("([s]) => +document.querySelector('#progress .lmforge-progress').dataset.current > s",
                               arg=[first], timeout=JOB_TIMEOUT_MS)
        wait_text(page, "loss_summary", r"^(?!" + re.escape(first_summary) + r"$)")  # the plot's data grew
        assert page.locator("#loss_plot canvas, #loss_plot svg").count() > 0
        screenshot(page, tmp_path, "train")

        # Start while it runs: the second job waits in the queue, which can cancel it.
        page.locator("#start").click()
        queued = wait_text(page, "train_msg", r"queued")
        job_id = re.search(r"Job (\S+) is queued", queued).group(1)
        wait_text(page, "jobs_table", job_id)
        page.locator("#cancel_job").click()
        wait_text(page, "jobs_msg", rf"Cancelled job {job_id}")
        wait_text(page, "jobs_table", r"cancelled")

        # A reload (or another browser) still shows the job running; Abort leaves a checkpoint.
        page.reload()
        wait_text(page, "job_status", r"Running")
        assert progress(page)[0] > 0
        page.locator("#abort").click()
        stopped = wait_text(page, "job_status", r"Aborted")
        checkpoints = sorted(Path(output_dir).glob("checkpoint-*"))
        assert checkpoints, "Abort leaves a checkpoint"
        assert "Stopped by SIGTERM after step" in stopped
        assert not (Path(output_dir) / "adapter_model.safetensors").exists()

        # Start again: it resumes from the checkpoint and finishes.
        set_up_training(page)  # the reload reset the form: set it up again
        fill(page, "output_dir", output_dir)
        page.locator("#start").click()
        wait_text(page, "job_status", r"Finished")
        log = page.locator("#log_box textarea").input_value()
        assert f"Resuming from {checkpoints[-1]}" in log, log
        assert (Path(output_dir) / "adapter_model.safetensors").is_file()
        assert progress(page) == (960, 960)

        # Chat with the result.
        page.locator("#refresh_adapters").click()
        pick(page, "adapter_path", output_dir)
        page.get_by_role("tab", name="Chat").click()
        page.locator("#load_model").click()
        wait_text(page, "chat_status", r"Model loaded", 120_000)
        expect(page.locator("#image")).to_be_hidden()  # the uploads show for vision-language models only
        page.locator("#query textarea").fill("Who are you?")
        page.locator("#send").click()
        page.wait_for_function("() => { const b = document.querySelectorAll('#chatbot [data-testid=bot]');"
                               " return b.length && /ForgeBot/.test(b[b.length - 1].innerText); }", timeout=120_000)
        screenshot(page, tmp_path, "chat")

        # Export with GGUF: the files are listed.
        page.get_by_role("tab", name="Export").click()
        page.locator("#export_formats label", has_text="gguf").click()
        page.locator("#export_start").click()
        wait_text(page, "export_status", r"Finished")
        files = wait_text(page, "export_files", r"\.gguf")
        for name in ("model.safetensors", "Modelfile", "config.json"):
            assert name in files, files
        screenshot(page, tmp_path, "export")

        # Evaluate & Predict tab, as a user finds it.
        page.get_by_role("tab", name="Evaluate & Predict").click()
        screenshot(page, tmp_path, "evaluate")

        # The same page in Chinese.
        pick(page, "lang", "中文")
        expect(page.locator("#start")).to_have_text("开始")


def test_preview_settings_files_prediction_chat_errors_and_a_failed_job(project, tmp_path):
    with running_board(project) as board, chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(board["url"])
        wait_text(page, "data_status", r"datasets in data")
        pick(page, "dataset", "identity")

        # The rows as the template renders them, two per page, trained text marked.
        page.locator("#preview_data").click()
        first = wait_text(page, "preview_box", r"identity row", 120_000)
        assert first.count("--- identity row") == 2 and "<|start_header_id|>user<|end_header_id|>" in first
        fill(page, "preview_page", "2")
        page.locator("#preview_data").click()
        second = wait_text(page, "preview_box", r"^(?!" + re.escape(first) + r"$)", 120_000)
        assert second.count("--- identity row") == 2 and second != first

        # Settings saved to a YAML and loaded back.
        fill(page, "learning_rate", "3e-4")
        fill(page, "config_path", "my_settings.yaml")
        page.locator("#save_args").click()
        wait_text(page, "train_msg", r"Settings saved to my_settings.yaml")
        saved = (project / "my_settings.yaml").read_text()
        assert "learning_rate: 0.0003" in saved and "dataset: identity" in saved
        fill(page, "learning_rate", "1e-2")
        page.locator("#load_args").click()
        wait_text(page, "train_msg", r"Settings loaded from my_settings.yaml")
        assert float(page.locator("#learning_rate input, #learning_rate textarea").first.input_value()) == 3e-4

        # Prediction on the base model: generated answers scored; the scores appear when the job ends.
        page.get_by_role("tab", name="Evaluate & Predict").click()
        pick(page, "eval_dataset", "identity")
        fill(page, "eval_max_samples", "4")
        fill(page, "max_new_tokens", "8")
        page.locator("#eval_start").click()
        wait_text(page, "eval_status", r"Finished")
        shown = wait_text(page, "eval_results", r"predict_bleu-4")  # a code box: its label and line numbers, then JSON
        results = json.loads(shown[shown.index("{"):shown.rindex("}") + 1])
        assert {"predict_bleu-4", "predict_rouge-1", "predict_rouge-2", "predict_rouge-l"} <= set(results)

        # A multiple-choice benchmark of the task folder (lmforge eval): its scores.
        from lmforge.testing.tasks import write_tiny_mmlu

        write_tiny_mmlu(project / "evaluation")
        page.locator("#task_dir input, #task_dir textarea").first.press("Enter")  # lists the folder's tasks
        pick(page, "benchmark", "tiny_mmlu_test")
        fill(page, "eval_output_dir", "saves/eval/tiny_mmlu")
        page.locator("#eval_start").click()
        wait_text(page, "eval_status", r"Job \S+: lmforge eval → saves/eval/tiny_mmlu")
        wait_text(page, "eval_status", r"Finished")
        shown = wait_text(page, "eval_results", r"Average")
        scores = json.loads(shown[shown.index("{"):shown.rindex("}") + 1])
        assert 0 <= scores["Average"] <= 100 and (project / "saves/eval/tiny_mmlu/results.json").is_file()

        # Chat: nothing loaded yet, tools that are not JSON, then a model loaded and unloaded.
        page.get_by_role("tab", name="Chat").click()
        page.locator("#query textarea").fill("hi")
        page.locator("#send").click()
        page.wait_for_function("() => [...document.querySelectorAll('[data-testid=toast-body]')].some("
                               "t => t.innerText.includes('Load a model first'))", timeout=30_000)
        page.locator("#load_model").click()
        wait_text(page, "chat_status", r"Model loaded: models/tiny-llama", 120_000)
        page.locator("#tools textarea").fill("[{name: x}]")
        page.locator("#query textarea").fill("hi")
        page.locator("#send").click()
        page.wait_for_function("() => [...document.querySelectorAll('[data-testid=toast-body]')].some("
                               "t => t.innerText.includes('Tools (JSON) is not valid JSON'))", timeout=30_000)
        page.locator("#unload_model").click()
        wait_text(page, "chat_status", r"Model unloaded")

        # A job that fails: its exit code, lmforge's one-line error and its log.
        page.get_by_role("tab", name="Train").click()
        fill(page, "model_path", "./models/no-such-model")
        page.locator("#start").click()
        failed = wait_text(page, "job_status", r"Failed")
        assert "Failed with exit code 1." in failed
        assert "lmforge train: error: Model folder './models/no-such-model' does not exist." in failed
        assert "./models/no-such-model" in page.locator("#log_box textarea").input_value()


def test_an_open_board_beyond_loopback_is_refused_without_a_login(project):
    env = dict(os.environ, GRADIO_SERVER_NAME="0.0.0.0")
    for name in ("GRADIO_AUTH", "GRADIO_AUTH_FILE", "GRADIO_ALLOW_UNAUTHENTICATED", "GRADIO_SHARE"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "lmforge", "webui"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "lmforge webui: error: lmforge webui would serve 0.0.0.0 (reachable from other machines) without a login. "
        "Set GRADIO_AUTH=user:password (or GRADIO_AUTH_FILE to a file of user:password lines), or "
        "GRADIO_ALLOW_UNAUTHENTICATED=true to serve it open anyway.")
