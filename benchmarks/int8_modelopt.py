"""INT8 for TensorRT targets: NVIDIA ModelOpt's ONNX PTQ against the ORT quantizer (S8S8 Q/DQ).

Per family (resnet, vit, swin by default): the accuracy benchmark's dense model trained on MNIST-5k at
32x32 (cached, seed 0), pruned through the product's stages (``rmtdeploy.prune`` hybrid keep-macs 0.5 at
the TensorRT target's channel multiple, BatchNorm recalibrated on mnist5k; ``rmtdeploy.finetune`` for
``--epochs``; ``rmtdeploy.export`` with ``--target``, so the TensorRT export form, and ``int8=True``, so
the ORT quantizer's TensorRT form: symmetric int8 activations and weights, Q/DQ on the inputs of
Conv/MatMul/Gemm and not on their outputs, float biases, MinMax). ModelOpt quantizes the same fp32 graph on the same calibration images (the first
``--calibration-images`` of the train split, as the export takes them) with its own placement, "max"
calibration (MinMax with symmetric ranges, as the ORT path uses) on the CPU execution provider, twice:
float parts left fp32, and float parts in fp16 (its default high-precision mode, the form TensorRT 11's
strongly typed networks need).

ModelOpt cannot share the project's environment (its ``onnx`` extra pins onnxruntime-gpu, cupy and an
older onnx), so it runs in its own interpreter, ``--modelopt-python``: this script re-runs itself there
with ``--worker`` (that mode imports only numpy and modelopt). Such a venv, as measured here:

    python3 -m venv /tmp/movenv && /tmp/movenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/movenv/bin/pip install "nvidia-modelopt[onnx]"

Per graph: where Q/DQ sit, judged against TensorRT's Q/DQ placement recommendations (developer guide,
"Explicit Quantization"): inputs of weighted ops quantized, their outputs not, the residual input of an
Add after a weighted op quantized with the weighted branch left free to fuse, no LayerNorm/Softmax fed
by a DequantizeLinear, graph outputs in float, symmetric int8 zero points. Then top-1 on the whole
validation split in ONNX Runtime CPU and parity with the fp32 graph (max |logit diff|, top-1 agreement),
with ORT's graph optimisations and without (the graph's own Q/DQ arithmetic). A first run trains the
dense models (about 8 min on 2 cores; cached as the accuracy benchmark caches them).

    python benchmarks/int8_modelopt.py --modelopt-python /tmp/movenv/bin/python      # ~5 min on 2 cores
    python benchmarks/int8_modelopt.py --modelopt-python /tmp/movenv/bin/python --families resnet --out /tmp/mo
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
WEIGHTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")
NORMS = ("LayerNormalization", "Softmax")
# What the ModelOpt environment pulled in beside the project's own packages (sizes read in the worker).
MODELOPT_DISTRIBUTIONS = ("nvidia-modelopt", "onnxruntime-gpu", "onnxruntime", "cupy-cuda12x", "onnx",
                          "onnx-graphsurgeon", "polygraphy", "onnxconverter-common", "onnxscript", "lief",
                          "cppimport", "scipy", "torch")  # fmt: skip
VARIANTS = {
    "ort-s8s8": "ORT quantizer, TensorRT form (rmtdeploy export --int8)",
    "modelopt": "ModelOpt, float parts fp32",
    "modelopt-fp16": "ModelOpt, float parts fp16",
}


# ---------------------------------------------------------------------------------------------- worker
def worker(args) -> int:
    """Runs under ``--modelopt-python``: quantize ``args.src`` into ``args.dst`` and print facts as JSON."""
    import logging

    import modelopt
    import modelopt.onnx.quantization as moq
    import numpy as np

    logging.disable(logging.WARNING)
    data = np.load(args.calibration)
    started = time.perf_counter()
    moq.quantize(
        str(args.src), quantize_mode="int8", calibration_data=data, calibration_method="max",
        calibration_shapes=f"{args.input_name}:{'x'.join(str(d) for d in (args.batch, *data.shape[1:]))}",
        calibration_eps=["cpu"], output_path=str(args.dst), high_precision_dtype=args.high_precision,
        log_level="ERROR",
    )  # fmt: skip
    print(json.dumps({"quantize_s": round(time.perf_counter() - started, 2), "modelopt": modelopt.__version__,
                      **_environment()}))  # fmt: skip
    return 0


def _environment() -> dict:
    from importlib import metadata

    import onnxruntime

    sizes = {}
    for name in MODELOPT_DISTRIBUTIONS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        total = sum((Path(dist.locate_file(f)).stat().st_size for f in dist.files or []
                     if Path(dist.locate_file(f)).is_file()), 0)  # fmt: skip
        sizes[name] = {"version": dist.version, "mb": round(total / 1e6, 1)}
    return {"onnxruntime_providers": onnxruntime.get_available_providers(), "distributions": sizes}


# ------------------------------------------------------------------------------------------- placement
def placement(path: str | os.PathLike) -> dict:
    """Where a Q/DQ graph quantizes, and how that reads against TensorRT's placement recommendations."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(os.fspath(path))
    graph = model.graph
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def is_weight(name: str) -> bool:  # a constant, or a constant behind Q/DQ/Cast
        seen = name
        while seen not in constants:
            node = producer.get(seen)
            if node is None or node.op_type not in ("QuantizeLinear", "DequantizeLinear", "Cast"):
                return False
            seen = node.input[0]
        return True

    def dequantized(name: str) -> bool:
        node = producer.get(name)
        return node is not None and node.op_type == "DequantizeLinear"

    def past_bias(name: str) -> str:  # a Linear's MatMul -> Add(bias): look through the bias Add
        node = producer.get(name)
        if node is not None and node.op_type == "Add" and any(is_weight(i) for i in node.input):
            return next(i for i in node.input if not is_weight(i))
        return name

    def from_weighted(name: str) -> str:  # "direct", "through Q/DQ" or "" (not a weighted op's output)
        name = past_bias(name)
        node = producer.get(name)
        if node is not None and node.op_type == "DequantizeLinear":
            quantize = producer.get(node.input[0])
            if quantize is not None and quantize.op_type == "QuantizeLinear":
                inner = producer.get(past_bias(quantize.input[0]))
                return "through Q/DQ" if inner is not None and inner.op_type in WEIGHTED else ""
            return ""
        return "direct" if node is not None and node.op_type in WEIGHTED else ""

    quantized_inputs: Counter = Counter()  # op type -> ops with a dequantized activation input
    weighted = {"total": 0, "all_inputs_quantized": 0, "activation_only": 0}
    output_quantized: set[str] = set()  # weighted ops whose output (past a bias Add) feeds a QuantizeLinear
    residual_sources: set[str] = set()  # producers of the quantized residual input of a fusible Add
    residual = {"fusible": 0, "split by Q/DQ": 0, "residual in float": 0}
    norms_quantized: Counter = Counter()
    for node in graph.node:
        op = node.op_type
        if op in ("QuantizeLinear", "DequantizeLinear"):
            continue
        activations = [i for i in node.input if i and not is_weight(i)]
        if op not in ("Shape", "Size") and any(dequantized(i) for i in activations):  # those read no values
            quantized_inputs[op] += 1
        if op in NORMS and node.input and dequantized(node.input[0]):
            norms_quantized[op] += 1
        if op in WEIGHTED:
            weighted["total"] += 1
            data_inputs = node.input[:2]
            weighted["all_inputs_quantized"] += all(dequantized(i) for i in data_inputs)
            weighted["activation_only"] += not any(is_weight(i) for i in data_inputs)
            outputs = [node.output[0]]
            outputs += [n.output[0] for n in consumers.get(node.output[0], []) if n.op_type == "Add"
                        and past_bias(n.output[0]) != n.output[0]]  # fmt: skip
            if any(n.op_type == "QuantizeLinear" for o in outputs for n in consumers.get(o, [])):
                output_quantized.add(node.name)
        if op == "Add" and len(activations) == 2:
            kinds = [from_weighted(i) for i in activations]
            if "direct" in kinds:
                other = activations[1 - kinds.index("direct")]
                residual["fusible" if dequantized(other) else "residual in float"] += 1
                if dequantized(other):  # which weighted op, if any, the quantized residual comes from
                    quantize = producer.get(producer[other].input[0])
                    source = producer.get(past_bias(quantize.input[0])) if quantize is not None else None
                    residual_sources.add(source.name if source is not None else "")
            elif "through Q/DQ" in kinds:
                residual["split by Q/DQ"] += 1
    weighted["output_quantized"] = len(output_quantized)
    weighted["output_quantized_as_residual"] = len(output_quantized & residual_sources)
    zero_points: Counter = Counter()
    inits = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or is_weight(node.input[0]):
            continue
        if len(node.input) < 3 or not node.input[2]:
            zero_points["uint8 (no zero point)"] += 1
            continue
        point = numpy_helper.to_array(inits[node.input[2]]) if node.input[2] in inits else None
        kind = "?" if point is None else f"{point.dtype}{' symmetric' if not point.any() else ' asymmetric'}"
        zero_points[kind] += 1
    ops = Counter(n.op_type for n in graph.node)
    float_types = Counter(i.data_type for i in graph.initializer)
    return {
        "nodes": len(graph.node),
        "quantize": ops["QuantizeLinear"],
        "dequantize": ops["DequantizeLinear"],
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "quantized_inputs": dict(sorted(quantized_inputs.items())),
        "weighted": weighted,
        "residual_adds": residual,
        "norm_softmax_quantized": dict(norms_quantized),
        "output_quantized": any(dequantized(o.name) for o in graph.output),
        "activation_zero_points": dict(zero_points),
        "fp16_initializers": float_types.get(onnx.TensorProto.FLOAT16, 0),
        "file_mb": round(Path(path).stat().st_size / 1e6, 2),
    }


# ------------------------------------------------------------------------------------------ evaluation
def evaluate(paths: dict[str, Path], val: list) -> dict:
    """Top-1 of each graph, and its parity with the fp32 graph (max |logit diff|, top-1 agreement), in ORT
    CPU twice: with its graph optimisations (ORT_ENABLE_ALL, how the product runs graphs; Q/DQ pairs fuse
    into integer kernels) and without (ORT_DISABLE_ALL: the graph's own Q/DQ arithmetic, op by op)."""
    import numpy as np
    import onnxruntime as ort

    labels = np.concatenate([y for _, y in val])
    levels = {"optimized": "ORT_ENABLE_ALL", "unoptimized": "ORT_DISABLE_ALL"}
    logits: dict[str, dict] = {level: {} for level in levels}
    for level, setting in levels.items():
        for name, path in paths.items():
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.log_severity_level = 1, 3
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, setting)
            try:
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # a graph ORT CPU cannot load is a result, not a crash
                logits[level][name] = str(exc).splitlines()[0][:200]
                continue
            feed = session.get_inputs()[0]
            dtype = np.float16 if "float16" in feed.type else np.float32
            logits[level][name] = np.concatenate(
                [session.run(None, {feed.name: x.astype(dtype)})[0].astype(np.float32) for x, _ in val]
            )
    out: dict[str, dict] = {}
    reference = logits["optimized"]["fp32"]
    for level, graphs in logits.items():
        for name, value in graphs.items():
            if isinstance(value, str):
                out.setdefault(name, {})[level] = {"error": value}
                continue
            out.setdefault(name, {})[level] = {
                "top1": round(float((value.argmax(1) == labels).mean() * 100), 2),
                "max_abs_diff": round(float(np.abs(value - reference).max()), 5),
                "agreement": round(float((value.argmax(1) == reference.argmax(1)).mean() * 100), 2),
            }
    return out


# ------------------------------------------------------------------------------------------ per family
def run_family(family: str, args, tmp: Path) -> dict:
    import numpy as np
    import torch

    import rmtdeploy
    import rmtdeploy.retention as retention
    from rmtdeploy.data import open_data
    from rmtdeploy.finetuning.scratch import CACHE as TRAINED_CACHE
    from rmtdeploy.models import LoadedModel

    settings = retention.Settings()
    weights = TRAINED_CACHE
    dense, record = retention.train_dense(family, 0, settings, weights, lambda m: print(m, flush=True))
    recipe = retention.FAMILIES[family]
    loaded = LoadedModel(dense, recipe.timm_name, family, f"checkpoint:accuracy_retention {family} seed 0")
    started = time.perf_counter()
    rmtdeploy.prune(loaded, tmp / f"{family}-pruned", keep_macs=args.keep, target=args.target,
                    calibration=settings.dataset, force=True)  # fmt: skip
    rmtdeploy.finetune(tmp / f"{family}-pruned", settings.dataset, tmp / f"{family}-ft", epochs=args.epochs,
                       teacher=dense, keep="last", force=True)  # fmt: skip
    prepare_s = time.perf_counter() - started
    onnx_path = tmp / f"{family}.onnx"
    run = rmtdeploy.export(tmp / f"{family}-ft", onnx_path, target=args.target, data=settings.dataset, int8=True,
                           calibration_images=args.calibration_images, force=True)  # fmt: skip
    paths = {"fp32": onnx_path, "ort-s8s8": Path(run.int8["path"])}
    pruned = rmtdeploy.load_pruned(tmp / f"{family}-ft").model.eval()
    source = open_data(settings.dataset)
    train = source.dataset("train", pruned)
    images = np.stack([train[i][0].numpy() for i in range(min(args.calibration_images, len(train)))])
    calibration = tmp / f"{family}-calibration.npy"
    np.save(calibration, images.astype(np.float32))
    modelopt = {}
    for variant, precision in (("modelopt", "fp32"), ("modelopt-fp16", "fp16")):
        dst = tmp / f"{family}.{variant}.onnx"
        command = [args.modelopt_python, __file__, "--worker", "--src", str(onnx_path), "--dst", str(dst),
                   "--calibration", str(calibration), "--high-precision", precision,
                   "--batch", str(PARITY_BATCH), "--input-name", run.result.input_names[0]]  # fmt: skip
        done = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
        if done.returncode != 0:
            raise SystemExit(f"ModelOpt failed on {family} ({precision}): {done.stderr.strip()[-2000:]}")
        modelopt[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        paths[variant] = dst
    loader = torch.utils.data.DataLoader(source.dataset("val", pruned), batch_size=PARITY_BATCH)
    val = [(x.numpy(), y.numpy()) for x, y in loader]
    row = {
        "family": family, "model": recipe.timm_name, "dense_top1": record["top1"],
        "macs_kept": args.keep, "val_images": int(sum(len(y) for _, y in val)), "prepare_s": round(prepare_s, 1),
        "ort_quantize_s": run.int8["quantize_s"],
        "modelopt_quantize_s": {k: v["quantize_s"] for k, v in modelopt.items()},
        "accuracy": evaluate(paths, val),
        "placement": {name: placement(path) for name, path in paths.items() if name != "fp32"},
        "modelopt_environment": next(iter(modelopt.values())),
    }  # fmt: skip
    row["modelopt_environment"].pop("quantize_s", None)
    print(json.dumps({k: row[k] for k in ("family", "accuracy")}), flush=True)
    return row


PARITY_BATCH = 32  # the export's calibration batch


# ------------------------------------------------------------------------------------------------ main
def table(rows: list[dict]) -> list[str]:
    lines = [
        "## Q/DQ placement against TensorRT's recommendations", "",
        "| family | graph | Q / DQ nodes | weighted ops with all inputs quantized | weighted ops with quantized output "
        "(of which: the residual input of a fusible Add) | "
        "residual Adds: fusible / split by Q/DQ / residual float | LayerNorm/Softmax fed by DQ | graph output "
        "quantized | activation zero points | opset | MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        for name, p in r["placement"].items():
            w, a = p["weighted"], p["residual_adds"]
            norms = ", ".join(f"{n} {op}" for op, n in p["norm_softmax_quantized"].items()) or "0"
            zps = ", ".join(f"{n} {k}" for k, n in p["activation_zero_points"].items())
            lines.append(
                f"| {r['family']} | {name} | {p['quantize']} / {p['dequantize']} | {w['all_inputs_quantized']} of "
                f"{w['total']} | {w['output_quantized']} ({w['output_quantized_as_residual']}) | {a['fusible']} / {a['split by Q/DQ']} / "
                f"{a['residual in float']} | {norms} | {'yes' if p['output_quantized'] else 'no'} | {zps} | "
                f"{p['opset']} | {p['file_mb']} |"
            )
    lines += ["", "## Ops fed by a DequantizeLinear (where each tool quantizes)", "",
              "| family | graph | op type: count |", "|---|---|---|"]  # fmt: skip
    for r in rows:
        for name, p in r["placement"].items():
            ops = ", ".join(f"{op} {n}" for op, n in p["quantized_inputs"].items())
            lines.append(f"| {r['family']} | {name} | {ops} |")
    lines += ["", "## Top-1 and parity with the fp32 graph (ONNX Runtime CPU, whole validation split)", "",
              "Each cell: ORT with its graph optimisations (ORT_ENABLE_ALL) / without (ORT_DISABLE_ALL). Parity "
              "is against the fp32 graph run with optimisations.", "",
              "| family | fp32 top-1 | graph | top-1 | max abs logit diff vs fp32 | top-1 agreement with fp32 % |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        acc = r["accuracy"]
        fp32 = acc["fp32"]["optimized"]["top1"]
        for name in VARIANTS:
            cells = []
            for key, spec in (("top1", ".1f"), ("max_abs_diff", ".3f"), ("agreement", ".1f")):
                values = [acc[name][level] for level in ("optimized", "unoptimized")]
                cells.append(" / ".join("error" if "error" in v else format(v[key], spec) for v in values))
            lines.append(f"| {r['family']} | {fp32:.1f} | {name} | {' | '.join(cells)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", nargs="+", default=["resnet", "vit", "swin"],
                        choices=["resnet", "vit", "deit", "swin", "convnext", "hiera"])  # fmt: skip
    parser.add_argument("--modelopt-python", help="the interpreter of a venv with nvidia-modelopt[onnx]")
    parser.add_argument("--target", default="gpu-int8", help="a TensorRT target (default %(default)s)")
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=1, help="fine-tune epochs after pruning")
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--keep-graphs", type=Path, help="write the graphs here (default: a temporary folder)"
    )
    worker_mode = parser.add_argument_group("worker mode (run under --modelopt-python)")
    worker_mode.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    worker_mode.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    worker_mode.add_argument("--dst", type=Path, help=argparse.SUPPRESS)
    worker_mode.add_argument("--calibration", type=Path, help=argparse.SUPPRESS)
    worker_mode.add_argument("--high-precision", choices=("fp32", "fp16"), help=argparse.SUPPRESS)
    worker_mode.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    worker_mode.add_argument("--input-name", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if not args.modelopt_python:
        parser.error("--modelopt-python is required: ModelOpt's onnx extra cannot share this environment")

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _results import machine_conditions

    from rmtdeploy.io import atomic_write_json, atomic_write_text

    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="int8-modelopt-") as tmp:
        work = args.keep_graphs or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = [run_family(f, args, work) for f in args.families]
    what = " ".join(["benchmarks/int8_modelopt.py", *(sys.argv[1:] if argv is None else argv)])
    conditions = machine_conditions(what, 300)
    conditions.update(wall_s=round(time.perf_counter() - started, 1), ort_threads=1,
                      modelopt_environment=rows[0]["modelopt_environment"] if rows else None)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "int8_modelopt.json", {"conditions": conditions, "results": rows})
    env = conditions["modelopt_environment"] or {}
    dists = env.get("distributions", {})
    simd = conditions.get("cpu_simd_flags") or []
    versions = ", ".join(f"{k} {v['version']}" for k, v in dists.items() if k != "nvidia-modelopt")
    header = [
        "# INT8 for TensorRT targets: ModelOpt ONNX PTQ vs the ORT quantizer", "",
        f"`{what}` on {conditions['cpu']} ({conditions['cpu_count']} cores, "
        f"{'AVX-512' if 'avx512f' in simd else 'no AVX-512'}{', VNNI' if 'avx512_vnni' in simd else ''}), "
        f"1 torch thread, ORT CPU with 1 thread; torch {conditions['torch']}, onnxruntime "
        f"{conditions.get('onnxruntime_version')} (project env); nvidia-modelopt "
        f"{dists.get('nvidia-modelopt', {}).get('version')} in its own venv with "
        f"{versions}; ORT providers "
        f"there {env.get('onnxruntime_providers')}; wall {conditions['wall_s'] / 60:.1f} min.", "",
        "Installed sizes in the ModelOpt venv: "
        + ", ".join(f"{k} {v['mb']:.0f} MB" for k, v in dists.items() if k != "torch") + ".", "",
        f"MNIST-5k at 32×32, seed 0; dense = the accuracy benchmark's trained model; pruned by `rmtdeploy.prune` "
        f"(hybrid, keep-macs {args.keep}, target {args.target}), `rmtdeploy.finetune` {args.epochs} epoch(s), "
        f"`rmtdeploy.export --target {args.target} --int8` (ort-s8s8). ModelOpt: `modelopt.onnx.quantization."
        f"quantize` on the same fp32 graph and the same first {args.calibration_images} training images, "
        f"calibration 'max', calibration_eps ['cpu'], high_precision_dtype fp32 (modelopt) or fp16 "
        f"(modelopt-fp16). Both calibrate per tensor for activations, per channel for weights.", "",
    ]  # fmt: skip
    atomic_write_text(args.out / "int8_modelopt.md", "\n".join(header + table(rows)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
