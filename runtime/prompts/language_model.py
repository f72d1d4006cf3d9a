"""The bundle's language model through llama-cpp-python: JSON-constrained chat, images
for vision models, a wall-clock bound on every answer."""

from __future__ import annotations

import base64
import logging
import time

import cv2
import numpy as np

from ..bundle.loader import Bundle
from ..bundle.manifest import BundleError

log = logging.getLogger("lineside.llm")

# manifest `handler` of a vision model -> llama_cpp.llama_chat_format class
HANDLER_CLASSES = {
    "mtmd": "MTMDChatHandler",
    "llava-1-5": "Llava15ChatHandler",
    "llava-1-6": "Llava16ChatHandler",
    "moondream": "MoondreamChatHandler",
    "nanollava": "NanoLlavaChatHandler",
    "minicpm-v-2.6": "MiniCPMv26ChatHandler",
    "qwen2.5-vl": "Qwen25VLChatHandler",
    "llama-3-vision-alpha": "Llama3VisionAlphaChatHandler",
    "gemma4": "Gemma4ChatHandler",
}
TEXT_HANDLER = "text"  # a text-only model: no chat handler
HANDLERS = (TEXT_HANDLER, *HANDLER_CLASSES)  # every handler a manifest may name (export checks --handler here)


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError as e:
        raise RuntimeError("llama-cpp-python is not installed: pip install 'lineside[mllm]'") from e
    return llama_cpp


def handler_class(name: str):
    """The llama-cpp-python chat handler class a manifest names."""
    if name not in HANDLER_CLASSES:
        raise ValueError(f"unknown vision chat handler {name!r}; known: {', '.join(HANDLER_CLASSES)}")
    from llama_cpp import llama_chat_format

    return getattr(llama_chat_format, HANDLER_CLASSES[name])


def image_part(rgb: np.ndarray, max_side: int = 448) -> dict:
    """HxWx3 uint8 RGB -> an OpenAI-style image content part (PNG data URI), downscaled."""
    scale = min(1.0, max_side / max(rgb.shape[:2]))
    if scale < 1.0:
        rgb = cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode the image as PNG")
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}}


def vision_message(text: str, images: list[tuple[str, np.ndarray]]) -> dict:
    """One user message: for each image its caption then the image, then the question."""
    parts: list[dict] = []
    for caption, rgb in images:
        parts += [{"type": "text", "text": caption}, image_part(rgb)]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


class LanguageModel:
    """The bundle's language model (role language_model), loaded once. `vision` says whether images
    can be shown to it.

    From the manifest's config: `handler` and `vision` (the chat handler and its projector),
    `chat_format` ("gguf-template": the file's own chat template; "chatml" when the file has none)
    and `n_ctx_train`, which caps `n_ctx` (a longer context than the model was trained on only degrades it).
    """

    def __init__(self, bundle: Bundle, threads: int | None = None, n_ctx: int = 2048):
        llama_cpp = _llama_cpp()
        component = bundle.by_role("language_model")
        if component is None:
            raise BundleError(
                f"{bundle.path} has no language model (role language_model); "
                "add one with python -m export mllm --packaged --out BUNDLE"
            )
        self.component, config = component, component.config
        self.quant, entry = next(iter(component.files.items()))
        self.path = bundle.file_path(entry)
        self.sha256 = entry.sha256
        handler = None
        if config.get("vision"):
            mmproj = bundle.file_path(component.assets["mmproj"])
            handler = handler_class(config["handler"])(clip_model_path=str(mmproj), verbose=False)
        chat_format = None if config.get("chat_format", "gguf-template") == "gguf-template" else config["chat_format"]
        trained = int(config.get("n_ctx_train") or 0)
        if 0 < trained < n_ctx:
            log.info("context %d capped at the %d tokens %s was trained with", n_ctx, trained, self.path.name)
            n_ctx = trained
        self.llm = llama_cpp.Llama(
            str(self.path),
            n_ctx=n_ctx,
            n_threads=threads,
            chat_handler=handler,
            chat_format=chat_format,
            seed=0,
            verbose=False,
        )
        self.vision = handler is not None
        self.name = self.path.name

    def chat(
        self,
        messages: list[dict],
        schema: dict | None = None,
        max_tokens: int = 256,
        seed: int = 0,
        temperature: float = 0.2,
        deadline_s: float | None = None,
        stop: list[str] | None = None,
    ) -> tuple[str, dict]:
        """(answer text, stats). With `schema` the answer is grammar-constrained JSON; `stop`: strings that
        end the answer (left out of it).

        The answer is streamed so that it can be cut at `deadline_s`; a cut
        answer reports finish_reason "deadline".
        """
        started = time.perf_counter()
        chunks = self.llm.create_chat_completion(
            messages=messages,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            stream=True,
            response_format={"type": "json_object", "schema": schema} if schema else None,
            stop=stop,
        )
        parts, finish, tokens = [], None, 0
        for chunk in chunks:
            choice = chunk["choices"][0]
            piece = choice.get("delta", {}).get("content")
            if piece:
                parts.append(piece)
                tokens += 1
            finish = choice.get("finish_reason") or finish
            if deadline_s is not None and time.perf_counter() - started > deadline_s:
                finish = "deadline"
                chunks.close()
                break
        seconds = time.perf_counter() - started
        stats = {
            "tokens": tokens,
            "seconds": round(seconds, 3),
            "finish_reason": finish,
            "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
        }
        return "".join(parts).strip(), stats
