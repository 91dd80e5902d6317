"""Loading a GGUF file into ``llama_cpp.Llama`` with the model params the appliance sets."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError

_lock = threading.Lock()


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
