"""LLaMA Board: one Gradio page with a top bar (the model) and four tabs (train, evaluate & predict, chat, export).

Training, prediction and export run as jobs (`jobs.py`): `lmforge` child processes that outlive the
page. The page reads their files every two seconds (a timer), so a reload, a second browser or a
restarted board shows the same jobs. Only the chat runs in the board's own process (an engine loaded
and unloaded on request), as `lmforge webchat` does. Every word on the page comes from `locales/`.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Any

import gradio as gr

from lmforge.errors import UserError
from lmforge.utils.logging import get_logger
from lmforge.webui import choices, locales
from lmforge.webui import settings as forms
from lmforge.webui.chat_page import render_chat
from lmforge.webui.jobs import JobManager

logger = get_logger(__name__)
REFRESH_S = 2.0


class EngineSlot:
    """The chat tab's engine: none until Load model, freed by Unload model."""

    def __init__(self) -> None:
        from lmforge.config import GeneratingArguments

        self.engine = None
        self.generating = GeneratingArguments(do_sample=False)
        self.lang = "en"

    def stream_chat(self, messages, **kwargs):
        if self.engine is None:
            raise UserError(locales.message(self.lang, "model_not_loaded"))
        return self.engine.stream_chat(messages, **kwargs)

    def unload(self) -> None:
        self.engine = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


class Board:
    def __init__(self, workdir: Path, lang: str = "en") -> None:
        self.workdir = Path(workdir)
        self.saves = self.workdir / "saves"
        self.cache = self.workdir / "llamaboard_cache"
        self.jobs = JobManager(self.cache, self.workdir)
        self.slot = EngineSlot()
        self.lang = lang
        self.c: dict[str, Any] = {}  # translatable components by locale key

    # -- layout ------------------------------------------------------------------------------------
    def _add(self, key: str, component):
        self.c[key] = component
        return component

    def _kw(self, key: str) -> dict:
        """label/info (or value, for buttons) of `key` in the page's first language, and its elem_id."""
        return {"label": locales.label(self.lang, key), "info": locales.info(self.lang, key), "elem_id": key}

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="LLaMA Board · lmforge") as page:
            self._add("title", gr.Markdown(f"## {locales.label(self.lang, 'title')}", elem_id="title"))
            self._top_bar()
            with gr.Tabs():
                with self._add("train_tab", gr.Tab(locales.label(self.lang, "train_tab"), elem_id="train_tab")):
                    self._train_tab()
                with self._add("eval_tab", gr.Tab(locales.label(self.lang, "eval_tab"), elem_id="eval_tab")):
                    self._eval_tab()
                with self._add("chat_tab", gr.Tab(locales.label(self.lang, "chat_tab"), elem_id="chat_tab")):
                    self._chat_tab()
                with self._add("export_tab", gr.Tab(locales.label(self.lang, "export_tab"), elem_id="export_tab")):
                    self._export_tab()
            with self._add("jobs", gr.Accordion(locales.label(self.lang, "jobs"), open=True, elem_id="jobs")):
                self._jobs_panel()
            self._wire_language()
            c = self.c
            datasets = ([c["dataset_dir"], c["stage"], c["lang"]], [c["dataset"], c["eval_dataset"], c["data_status"]])
            c["stage"].change(self.refresh_datasets, *datasets, queue=False, api_visibility="private")
            c["dataset_dir"].submit(self.refresh_datasets, *datasets, queue=False, api_visibility="private")
            timer = gr.Timer(REFRESH_S)
            monitors = [self.c[k] for k in ("job_status", "progress", "log_box", "loss_plot", "loss_summary",
                                            "eval_status", "eval_results", "eval_log", "export_status",
                                            "export_files", "export_log", "jobs_table", "queued_job")]
            timer.tick(self.monitor, [self.c["lang"]], monitors, queue=False, api_visibility="private",
                       show_progress="hidden")
            page.load(self.monitor, [self.c["lang"]], monitors, queue=False, api_visibility="private")
            page.load(self.refresh_datasets, [self.c["dataset_dir"], self.c["stage"], self.c["lang"]],
                      [self.c["dataset"], self.c["eval_dataset"], self.c["data_status"]], queue=False,
                      api_visibility="private")
        return page

    def _top_bar(self) -> None:
        c = self.c
        with gr.Row():
            self._add("lang", gr.Dropdown(choices=[(n, k) for k, n in locales.LANGUAGES.items()], value=self.lang,
                                          scale=1, **self._kw("lang")))
            self._add("model_name", gr.Dropdown(choices=choices.model_choices(), value="tiny-llama",
                                                allow_custom_value=True, scale=3, **self._kw("model_name")))
            self._add("model_path", gr.Textbox(value="models/tiny-llama", scale=3, **self._kw("model_path")))
        with gr.Row():
            self._add("finetuning_type", gr.Dropdown(choices=["lora", "oft", "freeze", "full"], value="lora", scale=1,
                                                     **self._kw("finetuning_type")))
            self._add("adapter_path", gr.Dropdown(choices=choices.adapters(self.saves), value=[], multiselect=True,
                                                  allow_custom_value=True, scale=5, **self._kw("adapter_path")))
            self._add("refresh_adapters", gr.Button(locales.label(self.lang, "refresh_adapters"), scale=1,
                                                    elem_id="refresh_adapters"))
        with gr.Row():
            self._add("quantization_bit", gr.Dropdown(choices=["none", "8", "4"], value="none",
                                                      **self._kw("quantization_bit")))
            self._add("template", gr.Dropdown(choices=choices.templates(), value="llama3", **self._kw("template")))
            self._add("rope_scaling", gr.Dropdown(choices=list(choices.ROPE_SCALING), value="none",
                                                  **self._kw("rope_scaling")))
            self._add("booster", gr.Dropdown(choices=list(choices.BOOSTERS), value="auto", **self._kw("booster")))

        def pick_model(name):
            entry = choices.model_entry(name)
            if entry is None:  # a custom value: the path itself
                return gr.update(value=name), gr.update()
            return gr.update(value=entry["path"]), gr.update(value=entry["template"])

        c["model_name"].change(pick_model, c["model_name"], [c["model_path"], c["template"]], queue=False,
                               api_visibility="private")
        c["refresh_adapters"].click(lambda: gr.update(choices=choices.adapters(self.saves)), None,
                                    c["adapter_path"], queue=False, api_visibility="private")

    def _train_tab(self) -> None:
        c, kw = self.c, self._kw
        with gr.Row():
            self._add("stage", gr.Dropdown(choices=choices.stages(), value="sft", scale=1, **kw("stage")))
            self._add("dataset_dir", gr.Textbox(value="data", scale=1, **kw("dataset_dir")))
            self._add("dataset", gr.Dropdown(choices=[], value=[], multiselect=True, scale=3, **kw("dataset")))
        self._add("data_status", gr.Markdown(elem_id="data_status"))
        with gr.Row():
            self._add("preview_data", gr.Button(locales.label(self.lang, "preview_data"), elem_id="preview_data",
                                                scale=1))
            self._add("preview_page", gr.Number(value=1, minimum=1, precision=0, scale=1, **kw("preview_page")))
        self._add("preview_box", gr.Textbox(lines=8, max_lines=20, interactive=False, visible=False,
                                            **kw("preview_box")))
        with self._add("basic", gr.Accordion(locales.label(self.lang, "basic"), open=True, elem_id="basic")):
            with gr.Row():
                self._add("learning_rate", gr.Textbox(value="5e-5", **kw("learning_rate")))
                self._add("num_train_epochs", gr.Number(value=3, **kw("num_train_epochs")))
                self._add("max_steps", gr.Number(value=0, precision=0, **kw("max_steps")))
                self._add("max_grad_norm", gr.Number(value=1.0, **kw("max_grad_norm")))
                self._add("max_samples", gr.Number(value=100000, precision=0, **kw("max_samples")))
                self._add("compute_type", gr.Dropdown(choices=list(choices.COMPUTE_TYPES), value="fp32",
                                                      **kw("compute_type")))
            with gr.Row():
                self._add("cutoff_len", gr.Number(value=2048, precision=0, **kw("cutoff_len")))
                self._add("per_device_train_batch_size", gr.Number(value=2, precision=0,
                                                                   **kw("per_device_train_batch_size")))
                self._add("gradient_accumulation_steps", gr.Number(value=8, precision=0,
                                                                   **kw("gradient_accumulation_steps")))
                self._add("val_size", gr.Number(value=0, **kw("val_size")))
                self._add("lr_scheduler_type", gr.Dropdown(choices=list(choices.SCHEDULERS), value="cosine",
                                                           **kw("lr_scheduler_type")))
        with self._add("other", gr.Accordion(locales.label(self.lang, "other"), open=False, elem_id="other")):
            with gr.Row():
                self._add("logging_steps", gr.Number(value=5, precision=0, **kw("logging_steps")))
                self._add("save_steps", gr.Number(value=100, precision=0, **kw("save_steps")))
                self._add("warmup_steps", gr.Number(value=0, precision=0, **kw("warmup_steps")))
                self._add("packing", gr.Checkbox(value=False, **kw("packing")))
                self._add("train_on_prompt", gr.Checkbox(value=False, **kw("train_on_prompt")))
            with gr.Row():
                self._add("placeholders", gr.Textbox(value="", **kw("placeholders")))
                self._add("extra_args", gr.Textbox(value="", **kw("extra_args")))
        with self._add("lora", gr.Accordion(locales.label(self.lang, "lora"), open=False, elem_id="lora")):
            with gr.Row():
                self._add("lora_rank", gr.Number(value=8, precision=0, **kw("lora_rank")))
                self._add("lora_alpha", gr.Number(value=0, precision=0, **kw("lora_alpha")))
                self._add("lora_dropout", gr.Number(value=0, **kw("lora_dropout")))
                self._add("lora_target", gr.Textbox(value="all", **kw("lora_target")))
                self._add("use_rslora", gr.Checkbox(value=False, **kw("use_rslora")))
                self._add("use_dora", gr.Checkbox(value=False, **kw("use_dora")))
        with self._add("freeze", gr.Accordion(locales.label(self.lang, "freeze"), open=False, elem_id="freeze")):
            with gr.Row():
                self._add("freeze_trainable_layers", gr.Number(value=2, precision=0,
                                                               **kw("freeze_trainable_layers")))
                self._add("freeze_trainable_modules", gr.Textbox(value="all", **kw("freeze_trainable_modules")))
        with self._add("rl", gr.Accordion(locales.label(self.lang, "rl"), open=False, elem_id="rl")):
            with gr.Row():
                self._add("pref_beta", gr.Number(value=0.1, **kw("pref_beta")))
                self._add("pref_ftx", gr.Number(value=0, **kw("pref_ftx")))
                self._add("pref_loss", gr.Dropdown(choices=list(choices.PREF_LOSSES), value="sigmoid",
                                                   **kw("pref_loss")))
                self._add("reward_model", gr.Textbox(value="", **kw("reward_model")))
                self._add("reward_funcs", gr.Textbox(value="", **kw("reward_funcs")))
                self._add("num_generations", gr.Number(value=8, precision=0, **kw("num_generations")))
        with self._add("distributed", gr.Accordion(locales.label(self.lang, "distributed"), open=False,
                                                   elem_id="distributed")):
            with gr.Row():
                self._add("device_count", gr.Textbox(value=choices.device_count(), interactive=False,
                                                     **kw("device_count")))
                self._add("nproc", gr.Number(value=1, minimum=1, precision=0, **kw("nproc")))
                self._add("ds_stage", gr.Dropdown(choices=["none", "2", "3"], value="none", **kw("ds_stage")))
        with gr.Row():
            self._add("output_dir", gr.Textbox(value=self._new_output_dir("tiny-llama", "lora", "sft"), scale=3,
                                               **kw("output_dir")))
            self._add("config_path", gr.Textbox(value=str(self.cache / "train_settings.yaml"), scale=2,
                                                **kw("config_path")))
        with gr.Row():
            for key, variant in (("cmd_preview", "secondary"), ("save_args", "secondary"), ("load_args", "secondary"),
                                 ("start", "primary"), ("abort", "stop")):
                self._add(key, gr.Button(locales.label(self.lang, key), variant=variant, elem_id=key))
        self._add("command_box", gr.Code(language="yaml", visible=False, elem_id="command_box", interactive=False))
        self._add("train_msg", gr.Markdown(elem_id="train_msg"))  # what the last button did
        self._add("job_status", gr.Markdown(elem_id="job_status"))  # the job, refreshed by the timer
        self._add("progress", gr.HTML(elem_id="progress"))
        with gr.Row():
            self._add("log_box", gr.Textbox(lines=14, max_lines=14, autoscroll=True, interactive=False, scale=3,
                                            **kw("log_box")))
            with gr.Column(scale=2):
                self._add("loss_plot", gr.LinePlot(x="step", y="loss", elem_id="loss_plot",
                                                   label=locales.label(self.lang, "loss_plot")))
                self._add("loss_summary", gr.Markdown(elem_id="loss_summary"))

        train_inputs = self._train_field_set()
        for key in ("model_name", "finetuning_type", "stage"):
            c[key].change(lambda name, kind, stage: self._new_output_dir(name, kind, stage),
                          [c["model_name"], c["finetuning_type"], c["stage"]], c["output_dir"], queue=False,
                          api_visibility="private")
        c["preview_data"].click(self.preview_rows, train_inputs, c["preview_box"], api_visibility="private")
        c["cmd_preview"].click(self.preview_command, train_inputs, [c["command_box"], c["train_msg"]],
                               queue=False, api_visibility="private")
        c["save_args"].click(self.save_args, train_inputs, c["train_msg"], queue=False, api_visibility="private")
        c["load_args"].click(self.load_args, {c["config_path"], c["lang"]}, [*self._loadable(), c["train_msg"]],
                             queue=False, api_visibility="private")
        c["start"].click(self.start_train, train_inputs, c["train_msg"], queue=False, api_visibility="private")
        c["abort"].click(lambda lang: self.abort(("train",), lang), c["lang"], c["train_msg"], queue=False,
                         api_visibility="private")

    def _eval_tab(self) -> None:
        c, kw = self.c, self._kw
        with gr.Row():
            self._add("eval_dataset", gr.Dropdown(choices=[], value=[], multiselect=True, scale=3,
                                                  **kw("eval_dataset")))
            self._add("predict", gr.Checkbox(value=True, scale=1, **kw("predict")))
        with gr.Row():
            self._add("eval_cutoff_len", gr.Number(value=1024, precision=0, label=locales.label(self.lang, "cutoff_len"),
                                                   elem_id="eval_cutoff_len"))
            self._add("eval_max_samples", gr.Number(value=100000, precision=0,
                                                    label=locales.label(self.lang, "max_samples"),
                                                    elem_id="eval_max_samples"))
            self._add("per_device_eval_batch_size", gr.Number(value=2, precision=0,
                                                              **kw("per_device_eval_batch_size")))
            self._add("max_new_tokens", gr.Number(value=512, precision=0, **kw("max_new_tokens")))
            self._add("top_p", gr.Slider(0.01, 1.0, value=0.7, step=0.01, **kw("top_p")))
            self._add("temperature", gr.Slider(0.01, 1.5, value=0.95, step=0.01, **kw("temperature")))
        with gr.Row():
            self._add("task_dir", gr.Textbox(value="evaluation", scale=2, **kw("task_dir")))
            self._add("benchmark", gr.Dropdown(choices=choices.benchmarks("evaluation"), value="none",
                                               allow_custom_value=True, scale=2, **kw("benchmark")))
            self._add("n_shot", gr.Number(value=5, minimum=0, precision=0, scale=1, **kw("n_shot")))
            self._add("eval_lang", gr.Dropdown(choices=["en", "zh"], value="en", scale=1, **kw("eval_lang")))
        self._add("eval_output_dir", gr.Textbox(value=str(self.saves / "predict" / time.strftime("%Y%m%d-%H%M%S")),
                                                **kw("eval_output_dir")))
        with gr.Row():
            self._add("eval_start", gr.Button(locales.label(self.lang, "eval_start"), variant="primary",
                                              elem_id="eval_start"))
            self._add("eval_abort", gr.Button(locales.label(self.lang, "eval_abort"), variant="stop",
                                              elem_id="eval_abort"))
        self._add("eval_msg", gr.Markdown(elem_id="eval_msg"))
        self._add("eval_status", gr.Markdown(elem_id="eval_status"))
        self._add("eval_results", gr.Code(language="json", interactive=False, elem_id="eval_results",
                                          label=locales.label(self.lang, "eval_results")))
        self._add("eval_log", gr.Textbox(lines=8, max_lines=8, interactive=False, autoscroll=True, **kw("eval_log")))
        c["eval_start"].click(self.start_predict, self._eval_field_set(), c["eval_msg"], queue=False,
                              api_visibility="private")
        c["task_dir"].submit(lambda folder: gr.update(choices=choices.benchmarks(folder)), c["task_dir"],
                             c["benchmark"], queue=False, api_visibility="private")
        c["eval_abort"].click(lambda lang: self.abort(("predict",), lang), c["lang"], c["eval_msg"], queue=False,
                              api_visibility="private")

    def _chat_tab(self) -> None:
        c, kw = self.c, self._kw
        with gr.Row():
            self._add("infer_backend", gr.Dropdown(choices=list(choices.BACKENDS), value="huggingface", scale=2,
                                                   **kw("infer_backend")))
            self._add("load_model", gr.Button(locales.label(self.lang, "load_model"), variant="primary", scale=1,
                                              elem_id="load_model"))
            self._add("unload_model", gr.Button(locales.label(self.lang, "unload_model"), scale=1,
                                                elem_id="unload_model"))
        self._add("chat_status", gr.Markdown(elem_id="chat_status"))
        chat = render_chat(self.slot, with_tools=True)
        self.c["tools"] = chat["tools"]
        self.c["media_row"] = chat["media_row"]
        model_inputs = {c[k] for k in ("model_path", "adapter_path", "template", "finetuning_type",
                                       "quantization_bit", "rope_scaling", "booster", "infer_backend", "lang")}
        c["load_model"].click(self.load_model, model_inputs, c["chat_status"], api_visibility="private").then(
            self.media_visible, None, c["media_row"], queue=False, api_visibility="private")
        c["unload_model"].click(self.unload_model, c["lang"], c["chat_status"], queue=False,
                                api_visibility="private").then(self.media_visible, None, c["media_row"], queue=False,
                                                               api_visibility="private")

    def _export_tab(self) -> None:
        c, kw = self.c, self._kw
        with gr.Row():
            self._add("export_dir", gr.Textbox(value=str(self.saves / "export" / time.strftime("%Y%m%d-%H%M%S")),
                                               scale=3, **kw("export_dir")))
            self._add("export_size", gr.Number(value=5, precision=0, scale=1, **kw("export_size")))
            self._add("export_dtype", gr.Dropdown(choices=["auto", "float32", "bfloat16", "float16"], value="auto",
                                                  scale=1, **kw("export_dtype")))
        with gr.Row():
            self._add("export_formats", gr.CheckboxGroup(choices=["safetensors", "gguf"], value=["safetensors"],
                                                         **kw("export_formats")))
            self._add("gguf_type", gr.Dropdown(choices=["f16", "bf16", "f32", "q8_0"], value="f16",
                                               **kw("gguf_type")))
            self._add("export_hub_model_id", gr.Textbox(value="", **kw("export_hub_model_id")))
        self._add("export_start", gr.Button(locales.label(self.lang, "export_start"), variant="primary",
                                            elem_id="export_start"))
        self._add("export_msg", gr.Markdown(elem_id="export_msg"))
        self._add("export_status", gr.Markdown(elem_id="export_status"))
        self._add("export_files", gr.Textbox(lines=6, interactive=False, **kw("export_files")))
        self._add("export_log", gr.Textbox(lines=8, max_lines=8, interactive=False, autoscroll=True,
                                           **kw("export_log")))
        fields = {c[k] for k in ("model_path", "adapter_path", "template", "finetuning_type", "quantization_bit",
                                 "rope_scaling", "booster", "export_dir", "export_size", "export_dtype",
                                 "export_formats", "gguf_type", "export_hub_model_id", "lang")}
        c["export_start"].click(self.start_export, fields, c["export_msg"], queue=False, api_visibility="private")

    def _jobs_panel(self) -> None:
        c, kw = self.c, self._kw
        self._add("jobs_table", gr.Dataframe(headers=["id", "kind", "status", "exit", "output"], interactive=False,
                                             wrap=True, **{k: v for k, v in kw("jobs_table").items() if k != "info"}))
        with gr.Row():
            self._add("queued_job", gr.Dropdown(choices=[], value=None, scale=3, **kw("queued_job")))
            self._add("cancel_job", gr.Button(locales.label(self.lang, "cancel_job"), scale=1, elem_id="cancel_job"))
        self._add("jobs_msg", gr.Markdown(elem_id="jobs_msg"))
        c["cancel_job"].click(self.cancel, [c["queued_job"], c["lang"]], c["jobs_msg"], queue=False,
                              api_visibility="private")

    def _wire_language(self) -> None:
        keys = list(self.c)

        def switch(lang):
            self.slot.lang = lang
            return [self._translated(key, lang) for key in keys]

        self.c["lang"].change(switch, self.c["lang"], [self.c[k] for k in keys], queue=False,
                              api_visibility="private")

    def _translated(self, key: str, lang: str):
        component = self.c[key]
        text = locales.label(lang, key) if key in locales.strings(lang) else None
        if key == "title":
            return gr.update(value=f"## {text}")
        if isinstance(component, gr.Button):
            return gr.update(value=text)
        if isinstance(component, (gr.Tab, gr.Accordion)):
            return gr.update(label=text)
        if text is None or isinstance(component, (gr.Markdown, gr.HTML)):
            return gr.update()
        update = {"label": text}
        hint = locales.info(lang, key) if key in locales.strings(lang) else None
        if hint is not None and hasattr(component, "info"):
            update["info"] = hint
        return gr.update(**update)

    # -- fields ------------------------------------------------------------------------------------
    TOP = ("model_name", "model_path", "finetuning_type", "adapter_path", "quantization_bit", "template",
           "rope_scaling", "booster", "lang")
    TRAIN = ("stage", "dataset_dir", "dataset", "preview_page", "learning_rate", "num_train_epochs", "max_steps",
             "max_grad_norm", "max_samples", "compute_type", "cutoff_len", "per_device_train_batch_size",
             "gradient_accumulation_steps", "val_size", "lr_scheduler_type", "logging_steps", "save_steps",
             "warmup_steps", "packing", "train_on_prompt", "placeholders", "extra_args", "lora_rank", "lora_alpha",
             "lora_dropout", "lora_target", "use_rslora", "use_dora", "freeze_trainable_layers",
             "freeze_trainable_modules", "pref_beta", "pref_ftx", "pref_loss", "reward_model", "reward_funcs",
             "num_generations", "nproc", "ds_stage", "output_dir", "config_path")
    EVAL = ("dataset_dir", "eval_dataset", "predict", "eval_cutoff_len", "eval_max_samples",
            "per_device_eval_batch_size", "max_new_tokens", "top_p", "temperature", "eval_output_dir", "task_dir",
            "benchmark", "n_shot", "eval_lang")

    def _train_field_set(self) -> set:
        return {self.c[k] for k in (*self.TOP, *self.TRAIN)}

    def _eval_field_set(self) -> set:
        return {self.c[k] for k in (*self.TOP, *self.EVAL)}

    def _loadable(self) -> list:
        return [self.c[k] for k in (*self.TOP[:-1], *self.TRAIN[:-1])]

    def _values(self, data: dict) -> dict[str, Any]:
        by_component = {id(component): key for key, component in self.c.items()}
        values = {by_component[id(component)]: value for component, value in data.items()
                  if id(component) in by_component}
        if "learning_rate" in values:
            values["learning_rate"] = _float(values["learning_rate"], "learning_rate")
        return values

    def _new_output_dir(self, model_name, finetuning_type, stage) -> str:
        return choices.output_dir_for(self.saves, model_name or "model", finetuning_type or "lora", stage or "sft",
                                      time.strftime("%Y%m%d-%H%M%S"))

    # -- handlers ----------------------------------------------------------------------------------
    def refresh_datasets(self, dataset_dir, stage, lang):
        names, problems = choices.datasets_for_stage(dataset_dir or "data", stage or "sft")
        sft_names, _ = choices.datasets_for_stage(dataset_dir or "data", "sft")
        lines = [f"⚠️ {problem}" for problem in problems]
        key = "datasets_found" if names else "no_datasets"
        lines.insert(0, locales.message(lang, key, count=len(names), path=dataset_dir, stage=stage))
        return (gr.update(choices=names, value=[]), gr.update(choices=sft_names, value=[]),
                "\n\n".join(lines))

    def _train_settings(self, values: dict) -> dict:
        deepspeed = None
        if values.get("ds_stage") not in (None, "none"):
            deepspeed = str(forms.deepspeed_config(self.cache, int(values["ds_stage"])))
        return forms.train_settings(values, deepspeed)

    def preview_command(self, data: dict):
        values = self._values_or_error(data)
        if isinstance(values, str):
            return gr.update(visible=False), values
        try:
            settings = self._train_settings(values)
        except UserError as err:
            return gr.update(visible=False), _error("train", err)
        config = Path(settings["output_dir"]) / "training_args.yaml"
        prefix = "".join(f"{key}={value} " for key, value in forms.launch_env(values).items())
        text = f"# {prefix}lmforge train {config}\n{forms.to_yaml(settings)}"
        return gr.update(value=text, visible=True), f"`{prefix}lmforge train {config}`"

    def preview_rows(self, data: dict):
        from lmforge.webui.preview import render_rows

        values = self._values_or_error(data)
        if isinstance(values, str):
            return gr.update(value=values, visible=True)
        try:
            text = render_rows(self._train_settings(values), int(values.get("preview_page") or 1))
        except UserError as err:
            text = _error("data", err)
        return gr.update(value=text, visible=True)

    def save_args(self, data: dict):
        values = self._values_or_error(data)
        if isinstance(values, str):
            return values
        try:
            settings = self._train_settings(values)
        except UserError as err:
            return _error("train", err)
        path = Path(values["config_path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(forms.to_yaml(settings), encoding="utf-8")
        return locales.message(values["lang"], "saved_args", path=path)

    def load_args(self, data: dict):
        values = self._values(data)
        lang = values["lang"]
        loadable = self._loadable()
        try:
            saved = forms.read_yaml(Path(values["config_path"]))
        except UserError as err:
            return [gr.update() for _ in loadable] + [_error("webui", err)]
        known = set(self.TOP) | set(self.TRAIN)
        fields, extra = forms.fields_from_yaml(saved, known)
        if extra:
            fields["extra_args"] = json.dumps(extra, ensure_ascii=False)
        by_component = {id(component): key for key, component in self.c.items()}
        updates = []
        for component in loadable:
            key = by_component[id(component)]
            updates.append(gr.update(value=fields[key]) if key in fields else gr.update())
        return updates + [locales.message(lang, "loaded_args", path=values["config_path"])]

    def start_train(self, data: dict):
        return self._start(data, "train", "train", self._train_settings, "output_dir", forms.launch_env)

    def start_predict(self, data: dict):
        values = self._values_or_error(data)
        if not isinstance(values, str) and values.get("benchmark") not in (None, "", "none"):
            return self._start(data, "predict", "eval", forms.benchmark_settings, "save_dir")
        return self._start(data, "predict", "train", forms.predict_settings, "output_dir")

    def start_export(self, data: dict):
        return self._start(data, "export", "export", forms.export_settings, "export_dir")

    def _start(self, data: dict, kind: str, command: str, build, output_key: str, environment=None) -> str:
        """Build the job's settings from the page, check them as `lmforge COMMAND` would, then queue the job."""
        values = self._values_or_error(data)
        if isinstance(values, str):
            return values
        try:
            settings = build(values)
            forms.check(command, settings, self.cache / "scratch")
        except UserError as err:
            return _error(command, err)
        env = environment(values) if environment else {}
        return self._submitted(self.jobs.submit(kind, command, settings, settings[output_key], env), values["lang"])

    def _submitted(self, job, lang: str) -> str:
        key = "queued_behind" if job.status == "queued" else "submitted"
        return locales.message(lang, key, id=job.id)

    def _values_or_error(self, data: dict) -> dict | str:
        try:
            return self._values(data)
        except UserError as err:
            return _error("webui", err)

    def abort(self, kinds: tuple[str, ...], lang: str) -> str:
        job = self.jobs.latest(kinds)
        if job is None or not job.active:
            return locales.message(lang, "nothing_to_abort")
        self.jobs.abort(job.id)
        return locales.message(lang, "aborting" if job.status != "queued" else "cancelled", id=job.id)

    def cancel(self, job_id: str | None, lang: str) -> str:
        if not job_id:
            return locales.message(lang, "pick_queued")
        self.jobs.abort(job_id)
        return locales.message(lang, "cancelled", id=job_id)

    def load_model(self, data: dict):
        values = self._values(data)
        lang = values["lang"]
        self.slot.lang = lang
        settings = forms.model_settings(values)
        settings.pop("finetuning_type", None)
        settings["infer_backend"] = values["infer_backend"]
        from lmforge.chat.factory import create_engine
        from lmforge.config import parse_config
        from lmforge.data.templates import list_templates

        self.slot.unload()
        try:
            cfg = parse_config("chat", [f"{key}={value}" for key, value in settings.items()],
                               template_names=list_templates())
            self.slot.engine = create_engine(cfg)
        except UserError as err:
            return _error("chat", err)
        model = settings["model_name_or_path"] + (f" + {settings['adapter_name_or_path']}"
                                                   if "adapter_name_or_path" in settings else "")
        return locales.message(lang, "model_loaded", model=model)

    def media_visible(self):
        """The Image and Video uploads show while a vision-language model is loaded."""
        engine = self.slot.engine
        return gr.update(visible=engine is not None and getattr(engine, "mm_processor", None) is not None)

    def unload_model(self, lang: str) -> str:
        self.slot.unload()
        return locales.message(lang, "model_unloaded")

    # -- the timer ---------------------------------------------------------------------------------
    def monitor(self, lang: str):
        from lmforge.webui.monitor import export_view, jobs_view, predict_view, train_view

        return (*train_view(self.jobs, lang), *predict_view(self.jobs, lang), *export_view(self.jobs, lang),
                *jobs_view(self.jobs))


def _error(command: str, err: Exception) -> str:
    """lmforge's one-line error, as the command prints it."""
    return f"❌ lmforge {command}: error: {err}"  # Gradio's Markdown sanitizes any HTML in it


def _float(value, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} '{value}' is not a number (e.g. 5e-5).") from None
