"""Loading a GGUF file into ``llama_cpp.Llama`` with the model params the appliance sets."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError

_lock = threading.Lock()
llama_log = logging.getLogger("llama.cpp")
# ggml's log levels (ggml.h): 1 debug, 2 info, 3 warn, 4 error, 5 the continuation of the
# previous line (llama-cpp-python's _logger.py maps an older numbering, one lower).
_LOG_LEVELS = {3: logging.WARNING, 4: logging.ERROR}
_routed: list = []  # the ctypes callback, alive as long as llama.cpp holds its address


def _emit(level: int, text: str) -> str:
    """Log each whole line of ``text`` at ``level`` (none at 0); returns the unfinished rest."""
    *lines, rest = text.split("\n")
    if level:
        for line in filter(None, map(str.strip, lines)):
            llama_log.log(level, "%s", line)
    return rest


def route_llama_log() -> None:
    """llama.cpp's warnings and errors into the ``llama.cpp`` logger, one record per line,
    so that they leave the process as the JSON lines everything else does; its info and
    debug lines (hundreds per model load) are dropped.

    Without it llama-cpp-python prints every line raw to stderr until the first
    ``Llama(verbose=False)``: on a CUDA build, ggml_cuda_init's "found 1 CUDA devices"
    (or "failed to initialize CUDA") on the first call that touches the backends,
    ``gpu_offload_supported`` at the service's start, broke the JSON log.
    """
    import ctypes

    import llama_cpp

    if _routed:
        return
    pending = {"level": 0, "text": ""}

    @llama_cpp.llama_log_callback
    def forward(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if level != 5:  # a new message: the last one's unfinished line ends here
            _emit(pending["level"], pending["text"] + "\n")
            pending.update(level=_LOG_LEVELS.get(level, 0), text="")
        pending["text"] = _emit(pending["level"], pending["text"] + text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))
    _routed.append(forward)


@contextlib.contextmanager
def llama_errors() -> Iterator[list[str]]:
    """The lines llama.cpp logs as errors meanwhile, kept out of the log (its warnings go
    on as before): for a caller that reports them itself (``appliance doctor``)."""
    route_llama_log()
    errors: list[str] = []

    def keep(record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        errors.append(record.getMessage())
        return False

    llama_log.addFilter(keep)
    try:
        yield errors
    finally:
        llama_log.removeFilter(keep)


def load_llama(path: Path, *, extra_bufts: bool, **kwargs: Any):
    """``llama_cpp.Llama(model_path=path, **kwargs)`` with ``use_extra_bufts`` as given.

    Extra buffer types let llama.cpp's CPU backend repack weights into the layout of its
    fastest kernels (AVX2/AVX-512 "CPU_REPACK", Intel AMX). The AMX kernels crash on some
    Xeons (issue 14), so repacking is off unless ``inference.cpu_repack`` turns it on
    (appliance/inference/selftest.py proves it safe first).

    llama-cpp-python 0.3.36's ``Llama`` takes no argument for it: ``__init__`` fills its
    ``llama_model_params`` from ``llama_model_default_params()`` and loads the model at
    once. That function is therefore wrapped for the duration of one load, under a lock
    (models load at start, one at a time), and the loaded params are checked, so a future
    llama-cpp-python that builds them another way fails loudly instead of repacking.

    Raises:
        ConfigError: the installed llama-cpp-python did not take the setting.
    """
    import llama_cpp
    from llama_cpp import llama_cpp as binding

    default = binding.llama_model_default_params

    def params():
        values = default()
        values.use_extra_bufts = extra_bufts
        return values

    with _lock:
        binding.llama_model_default_params = params
        try:
            llama = llama_cpp.Llama(model_path=str(path), **kwargs)
        finally:
            binding.llama_model_default_params = default
    if bool(llama.model_params.use_extra_bufts) != extra_bufts:
        llama.close()
        raise ConfigError(
            f"llama-cpp-python {llama_cpp.__version__} did not take use_extra_bufts="
            f"{extra_bufts}: appliance/inference/loader.py needs updating for it"
        )
    return llama


class Tokenizer:
    """What the chat and encoder models share: token counts in their vocabulary."""

    llama: Any

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each text, without BOS or [CLS]/[SEP] (reads only the vocabulary, so
        it is thread-safe)."""
        return [
            len(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))
            for text in texts
        ]
