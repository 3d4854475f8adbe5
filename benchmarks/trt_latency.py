"""TensorRT latency of ViT-base: FP16 baseline ONNX vs fxq's FP8 ONNX, strongly typed engines.

Both ONNX files come from the same ViTModel (transformers ViTConfig() defaults, eager attention,
random weights: latency does not depend on the weights' values). Eager, because the dynamo
exporter writes SDPA at opset 21 as MatMul/Softmax plus IsNaN/Where after each Softmax, which
would stand between the baseline's Softmax and MatMul; fxq gives one graph for either.
  - fp16: plain `torch.onnx.export(model.half(), dynamo=True)` (opset 21, dynamic batch);
  - fxq:  `fxq.quantize(model, ...).export_onnx(path, dtype=torch.float16)`.
Each is built into one strongly typed engine per batch size (optimization profile min=opt=max),
with the TensorRT Python API, or with trtexec where only trtexec is on PATH. Times are the median
GPU time of one enqueue (CUDA events around execute_async_v3; trtexec: its "GPU Compute Time"
median). The engine inspector lists the layers; fused attention kernels have `mha` in their names.

    python benchmarks/trt_latency.py                  # writes results/trt_latency.md
    python benchmarks/trt_latency.py --export-only    # only the two ONNX files (no TensorRT needed)
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
NO_TRT = "TensorRT is not installed (pip install fxq[trt] on a machine with TensorRT >= 10.6); no numbers"
IMAGE = (3, 224, 224)


def tensorrt_module():
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return trt


def version_tuple(v: str) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", v)[:2])


# ---------------------------------------------------------------- ONNX files
def make_vit(attn: str) -> torch.nn.Module:
    cfg = transformers.ViTConfig()
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return transformers.ViTModel(cfg).eval()


def export_fp16(model, path: Path, device) -> Path:
    half = copy.deepcopy(model).half().to(device)
    x = torch.randn(2, *IMAGE, device=device, dtype=torch.float16)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(half, (x,), dynamo=True, opset_version=21, dynamic_shapes=({0: batch},))
    program.save(str(path))
    return path


def export_fxq(model, path: Path, device, calib_batches: int) -> Path:
    import fxq

    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(16, *IMAGE, generator=g).to(device) for _ in range(calib_batches)]
    qm = fxq.quantize(model.to(device), calib[0][:1], calib, progress=False)
    qm.export_onnx(path, dtype=torch.float16)
    return path


def input_name(onnx_path: Path) -> str:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    names = [i.name for i in graph.input if i.name not in inits]
    if len(names) != 1:
        raise RuntimeError(f"{onnx_path}: expected one image input, found {names}")
    return names[0]


# ---------------------------------------------------------------- TensorRT Python API
def build_engine(trt, onnx_path: Path, name: str, batch: int):
    """A strongly typed engine for exactly `batch` images, built with detailed layer information."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # always on in TensorRT 11
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = builder.create_optimization_profile()
    shape = (batch, *IMAGE)
    profile.set_shape(name, shape, shape, shape)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path.name} (see its log above)")
    return trt.Runtime(logger).deserialize_cuda_engine(plan)


_TORCH_DTYPE = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
                "INT64": torch.int64, "BOOL": torch.bool}


def time_engine(trt, engine, name: str, batch: int, warmup: int, iters: int) -> float:
    context = engine.create_execution_context()
    context.set_input_shape(name, (batch, *IMAGE))
    buffers = []
    for i in range(engine.num_io_tensors):
        t = engine.get_tensor_name(i)
        dtype = _TORCH_DTYPE[engine.get_tensor_dtype(t).name]
        shape = tuple(context.get_tensor_shape(t))
        buf = (torch.randn(shape, device="cuda").to(dtype) if engine.get_tensor_mode(t) == trt.TensorIOMode.INPUT
               else torch.empty(shape, device="cuda", dtype=dtype))
        buffers.append(buf)  # keep it alive
        context.set_tensor_address(t, buf.data_ptr())
    stream = torch.cuda.Stream()
    times = []
    with torch.cuda.stream(stream):
        for i in range(warmup + iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("execute_async_v3 failed")
            end.record(stream)
            end.synchronize()
            if i >= warmup:
                times.append(start.elapsed_time(end))
    return statistics.median(times)


def engine_layers(trt, engine) -> list[dict]:
    info = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    # DETAILED verbosity gives one dict per layer; LAYER_NAMES_ONLY would give bare names.
    return [layer if isinstance(layer, dict) else {"Name": layer} for layer in info.get("Layers", [])]


# ---------------------------------------------------------------- trtexec (when only it is there)
def trtexec_run(exe: str, onnx_path: Path, name: str, batch: int, workdir: Path, iters: int) -> tuple[float, list]:
    layers_file = workdir / f"{onnx_path.stem}_b{batch}_layers.json"
    cmd = [exe, f"--onnx={onnx_path}", "--stronglyTyped", f"--shapes={name}:{batch}x{'x'.join(map(str, IMAGE))}",
           "--profilingVerbosity=detailed", f"--exportLayerInfo={layers_file}", f"--iterations={iters}"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"trtexec failed on {onnx_path.name}: {(out.stdout + out.stderr)[-2000:]}")
    m = re.search(r"GPU Compute Time:.*?median = ([0-9.]+) ms", out.stdout)
    if not m:
        raise RuntimeError("trtexec printed no 'GPU Compute Time ... median' line")
    layers = json.loads(layers_file.read_text()).get("Layers", [])
    return float(m.group(1)), [layer if isinstance(layer, dict) else {"Name": layer} for layer in layers]


# ---------------------------------------------------------------- report
def markdown(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def layer_summary(layers: list[dict]) -> dict:
    names = [str(layer.get("Name", "")) for layer in layers]
    return {
        "layers": len(layers),
        "mha layers": sum("mha" in n.lower() for n in names),
        "layers with FP8 tensors": sum("fp8" in json.dumps(layer).lower() for layer in layers),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "results" / "trt_latency.md")
    p.add_argument("--workdir", type=Path, default=ROOT / "results" / "tmp" / "trt")
    p.add_argument("--attn", choices=("eager", "sdpa"), default="eager",
                   help="HF attention of the exported model; sdpa's FP16 export adds IsNaN/Where after each Softmax")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--calib-batches", type=int, default=8, help="calibration batches of 16 random images")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--iters", type=int, default=500)
    p.add_argument("--export-only", action="store_true", help="write the two ONNX files and stop")
    args = p.parse_args(argv)

    trt = tensorrt_module()
    trtexec = shutil.which("trtexec")
    if not args.export_only:
        if trt is None and trtexec is None:
            print(NO_TRT)
            return 0
        if trt is not None and version_tuple(trt.__version__) < (10, 6):
            print(f"TensorRT {trt.__version__} is too old for FP8 engines from fxq (needs >= 10.6); no numbers")
            return 0
        if not torch.cuda.is_available():
            print("TensorRT is installed but CUDA is not available; no numbers")
            return 0
        if torch.cuda.get_device_capability() < (8, 9):
            print(f"{torch.cuda.get_device_name()} has no FP8 tensor cores (needs Ada or Hopper, sm_89+); no numbers")
            return 0

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = make_vit(args.attn)
    onnx_files = {
        "fp16": export_fp16(model, args.workdir / "vit_base_fp16.onnx", device),
        "fxq fp8": export_fxq(model, args.workdir / "vit_base_fxq_fp8.onnx", device, args.calib_batches),
    }
    for label, path in onnx_files.items():
        print(f"{label}: {path} ({path.stat().st_size / 1e6:.1f} MB, input {input_name(path)!r})")
    if args.export_only:
        return 0

    rows, mha_names = [], {}
    for label, path in onnx_files.items():
        name = input_name(path)
        for batch in args.batches:
            if trt is not None:
                engine = build_engine(trt, path, name, batch)
                ms = time_engine(trt, engine, name, batch, args.warmup, args.iters)
                layers = engine_layers(trt, engine)
                del engine
            else:
                ms, layers = trtexec_run(trtexec, path, name, batch, args.workdir, args.iters)
            (args.workdir / f"{path.stem}_b{batch}_layers.json").write_text(json.dumps(layers, indent=1))
            mha_names[(label, batch)] = [layer["Name"] for layer in layers if "mha" in str(layer.get("Name", "")).lower()]
            rows.append({"onnx": label, "batch": batch, "median ms": f"{ms:.3f}",
                         "img/s": f"{batch / (ms / 1e3):,.0f}", **layer_summary(layers)})
            print(markdown(rows[-1:]), flush=True)
    for batch in args.batches:
        base = next(float(r["median ms"]) for r in rows if r["onnx"] == "fp16" and r["batch"] == batch)
        for r in rows:
            if r["batch"] == batch:
                r["speed-up vs fp16"] = f"{base / float(r['median ms']):.2f}x"

    how = f"TensorRT {trt.__version__} Python API" if trt is not None else f"trtexec ({trtexec})"
    text = "\n".join([
        "# TensorRT latency: ViT-base FP16 baseline vs fxq FP8",
        "",
        f"- device: {torch.cuda.get_device_name()}; {how}; torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- model: ViTModel(ViTConfig()), attention '{args.attn}', random weights; strongly typed engines, "
        f"one per batch size; median of {args.iters} runs after {args.warmup} warm-up runs",
        "",
        markdown(rows),
        "Fused attention layers (`mha` in the layer name), first three per engine:",
        "",
        *[f"- {label}, batch {batch}: {len(names)} — {', '.join(names[:3]) or 'none'}"
          for (label, batch), names in mha_names.items()],
        "",
        f"Layer lists (engine inspector JSON): {args.workdir}",
        "",
    ])
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
