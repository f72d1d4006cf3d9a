"""A tiny llama-architecture GGUF with random f32 weights, for the quantisation path.

It borrows SmolLM2's tokenizer (read from the real GGUF with the `gguf` package),
so llama.cpp loads and runs it like any model; its answers are noise.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from export.mllm_export import packaged_gguf

EMBED, HEADS, FF, BLOCKS = 64, 2, 128, 2


def build_tiny_gguf(path: Path, seed: int = 0) -> Path:
    reader = gguf.GGUFReader(str(packaged_gguf()))

    def field(name):
        return reader.fields[name].contents()

    tokens = field("tokenizer.ggml.tokens")
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name("lineside tiny test model")
    writer.add_block_count(BLOCKS)
    writer.add_context_length(256)
    writer.add_embedding_length(EMBED)
    writer.add_feed_forward_length(FF)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(EMBED // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(field("tokenizer.ggml.pre"))
    writer.add_token_list(tokens)
    writer.add_token_types(field("tokenizer.ggml.token_type"))
    writer.add_token_merges(field("tokenizer.ggml.merges"))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template(field("tokenizer.chat_template"))

    def weight(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(len(tokens), EMBED))
    writer.add_tensor("output_norm.weight", np.ones(EMBED, np.float32))
    for b in range(BLOCKS):
        for name, shape in [
            ("attn_q", (EMBED, EMBED)),
            ("attn_k", (EMBED, EMBED)),
            ("attn_v", (EMBED, EMBED)),
            ("attn_output", (EMBED, EMBED)),
            ("ffn_gate", (FF, EMBED)),
            ("ffn_up", (FF, EMBED)),
            ("ffn_down", (EMBED, FF)),
        ]:
            writer.add_tensor(f"blk.{b}.{name}.weight", weight(*shape))
        writer.add_tensor(f"blk.{b}.attn_norm.weight", np.ones(EMBED, np.float32))
        writer.add_tensor(f"blk.{b}.ffn_norm.weight", np.ones(EMBED, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
