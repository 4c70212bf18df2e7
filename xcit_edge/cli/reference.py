"""`xcit-edge reference MODEL --calibration ... --out REF.npz`: the source's outputs, on CPU, GPUs or a TPU."""

from __future__ import annotations

import json
from pathlib import Path

import click

from xcit_edge.cli import options as opt
from xcit_edge.cli.app import load_tensorflow, main
from xcit_edge.cli.progress import Bars, run_stage


@main.command()
@click.argument("model")
@opt.options(
    opt.calibration("Images: 'sample', a folder, .npy/.npz, SUBSET@DIR.", required=True),
    click.option("--out", required=True, type=click.Path(path_type=Path), help="Reference file to write (.npz)."),
    opt.LABELS,
    opt.MAX_IMAGES,
    opt.weights(),
    opt.SIGNATURE,
    click.option("--device", type=click.Choice(["cpu", "gpu", "tpu"]), default="cpu", show_default=True,
                 help="Where the source model runs (one tf.distribute code path; only the strategy differs)."),
    opt.TPU,
    click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
                 help="Global batch (rounded up to a multiple of the replicas; the last batch is padded)."),
    opt.precision("highest: full float32 matmuls (TF32 off: HIGHEST precision under XLA on TPU)."),
    click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
                 help="--device cpu: split the host CPU into this many logical devices (the distributed path)."),
    opt.MAX_MEMORY,
    opt.TRUST_MODEL,
    opt.as_json("Print a summary as JSON."),
)
@click.pass_context
def reference(ctx, model, calibration, out, labels_file, max_images, weights, signature, output_key, device, tpu,
              zone, project, batch_size, precision, replicas, max_memory, trust_model, as_json):
    """Run MODEL on the calibration images (CPU, GPUs or a Cloud TPU) and store its outputs for validate."""
    from xcit_edge.reference import ReferenceOptions, compute_reference
    from xcit_edge.source.resolve import check_model_ref

    check_model_ref(model, weights)
    opts = ReferenceOptions(device=device, tpu=tpu, zone=zone, project=project, batch_size=batch_size,
                            precision=precision, replicas=replicas, trust_model=trust_model,
                            max_memory=opt.max_memory(max_memory))
    load_tensorflow(ctx)
    progress = Bars(ctx.obj.get("quiet", False), run_stage)
    with progress.bar:
        ref = compute_reference(model, calibration, labels_file=labels_file, max_images=max_images, weights=weights,
                                signature=signature, output_key=output_key, options=opts, progress=progress)
    ref.save(out)
    info = {"path": str(out), "images": len(ref.names), "kind": ref.kind, "outputs": list(ref.outputs.shape),
            "model_sha256": ref.model_sha256, "calibration_digest": ref.calibration_digest, **ref.provenance()}
    if as_json:
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(f"wrote {out}: {info['images']} images, {ref.kind} {info['outputs']}, on {info['placement']} "
                   f"(precision {precision}, TensorFlow {info['tensorflow']})")
