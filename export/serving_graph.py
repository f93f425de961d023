"""The serving graph: GPT-2 built for a KV cache that the engine owns and ORT writes in place.

Built with `onnx.helper` straight from the checkpoint's weights (optimum's export stays the
reference it is checked against, see export/exporter.py). Per layer: LayerNorm → packed QKV →
`com.microsoft.GroupQueryAttention` (heads = kv heads, no rotary) → projection, LayerNorm →
FastGelu (GPT-2's tanh gelu) → projection; the tied lm_head runs on each row's last real token
only, and a TopK on the device picks each row's K most likely next tokens (what the server
answers; the whole row stays on the device unless asked for). Every call is a right-padded
`[rows, S]` chunk: row b holds `query_seqlens[b]` new tokens (0: an idle row whose cache is left
alone) and will hold `seqlens_k[b] + 1` tokens of context afterwards. `past_key.N`/`present_key.N`
(and values) are `[rows, heads, slot_length, head_dim]`; bound to the same buffer, GQA appends the
new keys and values in place.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from contract import triton_io as io

OPSET = 17  # LayerNormalization
_ONNX_DTYPES = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}


def load_weights(checkpoint: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The checkpoint's GPT-2 config (as a dict) and its weights as fp32 numpy arrays."""
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(checkpoint, dtype=torch.float32)
    weights = {
        k.removeprefix("transformer."): v.detach().numpy().copy() for k, v in model.state_dict().items()
    }
    return model.config.to_dict(), weights


def build(
    config: dict,
    weights: dict[str, np.ndarray],
    dtype=np.float32,
    lm_head_matmul: bool = False,
    ragged: bool = True,
) -> onnx.ModelProto:
    """The serving graph for a GPT-2 `config` with `weights`, in `dtype` (float32 or float16).

    `lm_head_matmul` writes the lm_head as a MatMul on a transposed copy of the embedding instead
    of a Gemm on the embedding itself: int8 dynamic quantization only quantizes MatMuls.
    `ragged` passes `query_seqlens` to GroupQueryAttention (onnxruntime >= 1.32; the newest
    onnxruntime-gpu, 1.31, lacks it): rows of one call may then carry chunks of different lengths
    and idle rows. Without it every row of a call carries the same number of tokens, and the
    engine runs multi-token chunks one row per call (`ragged_chunks` in the model's metadata)."""
    layers, heads, hidden = config["n_layer"], config["n_head"], config["n_embd"]
    head_dim = hidden // heads
    eps = float(config.get("layer_norm_epsilon", 1e-5))
    if config.get("scale_attn_by_inverse_layer_idx") or config.get("reorder_and_upcast_attn"):
        raise ValueError(
            "GPT-2 variants with scale_attn_by_inverse_layer_idx or reorder_and_upcast_attn "
            "are not supported by the serving graph"
        )
    if config.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(
            f"activation {config.get('activation_function')!r} is not supported "
            "(the serving graph implements GPT-2's tanh gelu)"
        )
    elem = _ONNX_DTYPES[np.dtype(dtype).type]
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def weight(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array.astype(dtype)), name))
        return name

    def node(op: str, inputs: list[str], outputs: list[str] | str, domain: str = "", **attrs) -> str:
        outs = [outputs] if isinstance(outputs, str) else outputs
        nodes.append(helper.make_node(op, inputs, outs, name=outs[0] + "/" + op, domain=domain, **attrs))
        return outs[0]

    def layer_norm(x: str, prefix: str, out: str) -> str:
        return node(
            "LayerNormalization",
            [
                x,
                weight(prefix + ".weight", weights[prefix + ".weight"]),
                weight(prefix + ".bias", weights[prefix + ".bias"]),
            ],
            out,
            axis=-1,
            epsilon=eps,
        )

    def linear(x: str, prefix: str, out: str) -> str:  # GPT-2's Conv1D: x @ W[in, out] + b
        y = node("MatMul", [x, weight(prefix + ".weight", weights[prefix + ".weight"])], out + "_mm")
        return node("Add", [y, weight(prefix + ".bias", weights[prefix + ".bias"])], out)

    wte = weight("wte", weights["wte.weight"])
    tok = node("Gather", [wte, io.ONNX_INPUT_IDS], "tok_emb", axis=0)
    pos = node("Gather", [weight("wpe", weights["wpe.weight"]), io.ONNX_POSITION_IDS], "pos_emb", axis=0)
    h = node("Add", [tok, pos], "h0")
    seqlens_k, total = io.ONNX_SEQLENS_K, io.ONNX_TOTAL_SEQUENCE_LENGTH
    for i in range(layers):
        p = f"h.{i}"
        a = layer_norm(h, f"{p}.ln_1", f"{p}/ln_1")
        qkv = linear(a, f"{p}.attn.c_attn", f"{p}/qkv")
        attn = node(
            "GroupQueryAttention",
            [
                qkv,
                "",
                "",
                io.serving_past(i, "key"),
                io.serving_past(i, "value"),
                seqlens_k,
                total,
                *([""] * 9 + [io.ONNX_QUERY_SEQLENS] if ragged else []),
            ],
            [f"{p}/attn", io.serving_present(i, "key"), io.serving_present(i, "value")],
            domain="com.microsoft",
            num_heads=heads,
            kv_num_heads=heads,
            scale=float(1.0 / np.sqrt(head_dim)),
        )
        h = node("Add", [h, linear(attn, f"{p}.attn.c_proj", f"{p}/attn_out")], f"{p}/h_attn")
        m = layer_norm(h, f"{p}.ln_2", f"{p}/ln_2")
        fc = node("MatMul", [m, weight(f"{p}.mlp.c_fc.weight", weights[f"{p}.mlp.c_fc.weight"])], f"{p}/fc")
        act = node(
            "FastGelu",
            [fc, weight(f"{p}.mlp.c_fc.bias", weights[f"{p}.mlp.c_fc.bias"])],
            f"{p}/gelu",
            domain="com.microsoft",
        )
        h = node("Add", [h, linear(act, f"{p}.mlp.c_proj", f"{p}/mlp_out")], f"{p}/h")
    h = layer_norm(h, "ln_f", "h_final")
    # Each row's last real token: position query_seqlens - 1 (0 for idle rows, ignored).
    inits.append(numpy_helper.from_array(np.array(1, np.int64), "one"))
    inits.append(numpy_helper.from_array(np.array(0, np.int64), "zero"))
    q = node("Cast", [io.ONNX_QUERY_SEQLENS], "q_i64", to=TensorProto.INT64)
    last = node("Max", [node("Sub", [q, "one"], "q_minus_1"), "zero"], "last_index")
    last = node("Unsqueeze", [last, weight_i64(inits, "axis_last", [-1])], "last_index_2d")
    h_last = node("GatherND", [h, last], "h_last", batch_dims=1)  # [rows, hidden]
    if lm_head_matmul:
        logits = node("MatMul", [h_last, weight("lm_head_t", weights["wte.weight"].T)], "logits_raw")
    else:
        logits = node("Gemm", [h_last, wte], "logits_raw", transB=1)
    node("Cast", [logits], io.ONNX_LOGITS, to=TensorProto.FLOAT)
    k = min(io.CANDIDATES, config["vocab_size"])
    node(
        "TopK",
        [io.ONNX_LOGITS, weight_i64(inits, "candidates", [k])],
        [io.ONNX_TOP_LOGITS, "top_ids_i64"],
        axis=-1,
        largest=1,
        sorted=1,
    )
    node("Cast", ["top_ids_i64"], io.ONNX_TOP_IDS, to=TensorProto.INT32)

    cache_shape = ["rows", heads, "slot_length", head_dim]
    inputs = [
        helper.make_tensor_value_info(io.ONNX_INPUT_IDS, TensorProto.INT64, ["rows", "chunk"]),
        helper.make_tensor_value_info(io.ONNX_POSITION_IDS, TensorProto.INT64, ["rows", "chunk"]),
        helper.make_tensor_value_info(seqlens_k, TensorProto.INT32, ["rows"]),
        helper.make_tensor_value_info(total, TensorProto.INT32, []),
        helper.make_tensor_value_info(io.ONNX_QUERY_SEQLENS, TensorProto.INT32, ["rows"]),
    ]
    outputs = [
        helper.make_tensor_value_info(io.ONNX_LOGITS, TensorProto.FLOAT, ["rows", config["vocab_size"]]),
        helper.make_tensor_value_info(io.ONNX_TOP_LOGITS, TensorProto.FLOAT, ["rows", k]),
        helper.make_tensor_value_info(io.ONNX_TOP_IDS, TensorProto.INT32, ["rows", k]),
    ]
    for i in range(layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(io.serving_past(i, kind), elem, cache_shape))
            outputs.append(helper.make_tensor_value_info(io.serving_present(i, kind), elem, cache_shape))
    graph = helper.make_graph(nodes, "rudialogpt_serving", inputs, outputs, inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
        producer_name="rudialogpt-export",
    )
    model.ir_version = 8
    meta = {
        io.META_NUM_LAYERS: layers,
        io.META_NUM_HEADS: heads,
        io.META_HEAD_DIM: head_dim,
        io.META_VOCAB_SIZE: config["vocab_size"],
        io.META_MAX_POSITIONS: config["n_positions"],
        io.META_RAGGED_CHUNKS: int(ragged),
        io.META_CANDIDATES: k,
    }
    helper.set_model_props(model, {k: str(v) for k, v in meta.items()})
    return model


def weight_i64(inits: list, name: str, values: list[int]) -> str:
    inits.append(numpy_helper.from_array(np.array(values, np.int64), name))
    return name


def save(model: onnx.ModelProto, path: Path) -> None:
    """Write `model`; weights over ~1.8 GB go to an external-data file beside it (protobuf's limit)."""
    large = sum(len(t.raw_data) for t in model.graph.initializer) > 1_800_000_000
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=Path(path).name + ".data" if large else None,
    )
