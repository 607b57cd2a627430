"""`faultwatch export`: a fine-tuned run -> a verified bundle of FP32/INT8 encoders.

    faultwatch export --checkpoint runs/finetune-01 --formats onnx,onnx-int8,tflite-int8
    faultwatch export keygen --out keys/                  an Ed25519 key pair for signing
    faultwatch export sign bundles/m-1.tar.gz --key keys/ed25519.pem

Export prints one line per format, the parity table and where the bundle is; exits 1 (one-line
message) on a user mistake, a failed exporter or a failed parity gate. Heavy imports (torch, the
converters) happen only once the options are valid. `sign` prints the archive's sha256, which the
device's `update_bundle` command needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from export.formats import FORMATS, ExportError, FormatOutcome, check_options, parse_formats
from export.parity import DEFAULT_MAX_ACCURACY_DROP_POINTS, DEFAULT_MIN_AGREEMENT
from export.quantize import DEFAULT_CALIBRATION_CAP, CalibrationMethod

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Export a fine-tuned checkpoint to a verified model bundle (ONNX FP32/INT8, TFLite INT8); "
    "sign bundles for over-the-air updates (keygen, sign).",
)
TRY_CONFIG = "firmware_configs/dev-simulator.toml"  # simulated bearing, local broker
console = Console(highlight=False)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"export: {message}", err=True)
    return typer.Exit(1)


def _print_outcome(outcome: FormatOutcome) -> None:
    colour = {"ok": "green", "skipped": "yellow", "failed": "red"}[outcome.status]
    console.print(f"[{colour}]{escape(outcome.line())}[/{colour}]", soft_wrap=True)


@app.callback(invoke_without_command=True)
def export(
    ctx: typer.Context,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Fine-tuned .pt file, or the run folder holding finetuned.pt."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder the bundle and its .tar.gz go into.")] = Path(
        "bundles"
    ),
    formats: Annotated[
        str, typer.Option(help=f"Comma-separated formats: {', '.join(FORMATS)}.")
    ] = ",".join(FORMATS),
    calibration_method: Annotated[
        CalibrationMethod | None,
        typer.Option(help="Activation ranges for onnx-int8 (default minmax)."),
    ] = None,
    calibration_windows: Annotated[
        int | None,
        typer.Option(
            min=1,
            help=f"INT8 formats: calibrate on at most this many windows (seeded subset; "
            f"default {DEFAULT_CALIBRATION_CAP}).",
        ),
    ] = None,
    min_agreement: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Gate: min share of decisions equal to FP32's."),
    ] = DEFAULT_MIN_AGREEMENT,
    max_accuracy_drop: Annotated[
        float, typer.Option(min=0.0, help="Gate: max held-out accuracy drop vs FP32, in points.")
    ] = DEFAULT_MAX_ACCURACY_DROP_POINTS,
    name: Annotated[
        str | None, typer.Option(help="Model name (default faultwatch-<encoder>).")
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="Model version (default a UTC timestamp).")
    ] = None,
    uncertain_below: Annotated[
        float, typer.Option(help="Device reports 'uncertain' when max probability is below this.")
    ] = 0.7,
) -> None:
    """Export, check parity with the FP32 model on held-out windows, write and verify the bundle."""
    if ctx.invoked_subcommand is not None:
        if checkpoint is not None:
            raise _fail(f"--checkpoint does not apply to `{ctx.invoked_subcommand}`")
        return
    if checkpoint is None:
        raise _fail("--checkpoint is required: a fine-tuned .pt file or the run folder holding it")
    try:
        chosen = parse_formats(formats)
        check_options(
            chosen,
            {"calibration_method": calibration_method, "calibration_windows": calibration_windows},
        )
        from export.bundle import ExportOptions, export_bundle, load_run  # torch: only now

        run = load_run(checkpoint)
        options = ExportOptions(
            formats=chosen,
            out=out,
            calibration_method=calibration_method or CalibrationMethod.minmax,
            calibration_cap=calibration_windows or DEFAULT_CALIBRATION_CAP,
            min_agreement=min_agreement,
            max_accuracy_drop_points=max_accuracy_drop,
            name=name,
            version=version,
            uncertain_below=uncertain_below,
        )
        result = export_bundle(run, options, on_outcome=_print_outcome)
    except ExportError as exc:
        raise _fail(str(exc)) from None

    if result.report is not None:
        from export.parity import parity_table

        console.print(parity_table(result.report, min_agreement, max_accuracy_drop))
    if not result.ok:
        if result.report is None:
            raise _fail("a format failed, no bundle written: " + "; ".join(result.failures))
        raise _fail(
            "parity gate failed, no bundle written: "
            + "; ".join(result.failures)
            + ". Try --calibration-method entropy or percentile; if FP32 itself is unsure on "
            "many windows, train longer"
        )

    agreement = ", ".join(f"{m.format} {m.agreement:.1%}" for m in result.report.models)
    size_kb = result.archive.stat().st_size / 1000
    encoders = len(result.manifest.encoders)
    lines = [
        f"bundle:  {result.folder} (verified, {encoders} encoders)",
        f"archive: {result.archive} ({size_kb:.0f} kB)",
        f"agreement with fp32: {agreement}",
        f"try it here:  faultwatch agent run --config {TRY_CONFIG} --bundle {result.archive} "
        "--max-seconds 10",
        f"on a gateway: sudo deploy/install-agent.sh firmware_configs/raspberry-pi-5.toml "
        f"{result.archive}",
    ]
    for line in lines:
        console.print(line, markup=False, soft_wrap=True)


@app.command()
def keygen(
    out: Annotated[Path, typer.Option(help="Folder for ed25519.pem and ed25519.pub.pem.")],
) -> None:
    """Make an Ed25519 key pair for signing bundles (the private key is written 0600)."""
    from export.signing import SigningError
    from export.signing import keygen as make_keys

    try:
        private, public = make_keys(out)
    except (SigningError, OSError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"private key: {private} (keep it off the devices)", markup=False)
    console.print(
        f"public key:  {public} (copy to each device; list it in [updates] public_keys)",
        markup=False,
        soft_wrap=True,
    )


@app.command()
def sign(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder or .tar.gz to sign in place.")],
    key: Annotated[Path, typer.Option(help="Private key written by `keygen` (ed25519.pem).")],
) -> None:
    """Sign a bundle for over-the-air updates: writes manifest.sig (an archive is re-packed)."""
    from export.signing import SigningError, sign_bundle

    try:
        signed = sign_bundle(bundle, key)
    except (SigningError, OSError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"signed {signed.bundle} with key {signed.key_id}", markup=False, soft_wrap=True)
    if signed.archive_sha256 is None:
        archive = bundle.with_name(bundle.name + ".tar.gz")
        if archive.is_file():
            console.print(
                f"note: {archive} beside it is not signed by this; sign the archive too",
                markup=False,
                soft_wrap=True,
            )
        return
    console.print(f"sha256: {signed.archive_sha256}", markup=False)
    console.print(
        'update command: {"id": "1", "source": "https://HOST/'
        f'{signed.bundle.name}", "sha256": "{signed.archive_sha256}"}}',
        markup=False,
        soft_wrap=True,
    )
