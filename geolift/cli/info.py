"""``geolift info``: what geolift understands of a raster or a delivered product, before any fusion."""

import json
from pathlib import Path
from typing import Annotated

import typer

from geolift.cli import app, run_command, setup_logging


@app.command("info")
def info(
    source: Annotated[list[Path], typer.Argument(help="A raster, a product (folder, metadata file or ZIP), or band "
                                                     "files.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print it as JSON (for programs).")] = False,
) -> None:
    """Print what geolift reads from a scene: product, acquisition time, grid, bands, scaling, bad bands, masks."""
    setup_logging(quiet=True)

    def action():
        from geolift.io import open_scene
        from geolift.io.products.common import product_identity

        scene = open_scene(source[0] if len(source) == 1 else list(source), check_data=False)
        facts = {
            "files": list(scene.paths),
            "product": product_identity(scene),
            "crs": scene.crs.to_string(), "transform": list(scene.transform)[:6],
            "size": [scene.width, scene.height], "pixel_size": list(scene.res), "bands": scene.count,
            "wavelength_source": scene.wavelength_source,
            "bad_bands": [i + 1 for i in range(scene.count) if not scene.good_bands[i]],
            "masks": [mask.name for mask in scene.masks],
            "band_table": [
                {"band": i + 1, "name": scene.band_names[i],
                 "wavelength_nm": None if scene.wavelengths_nm is None else float(scene.wavelengths_nm[i]),
                 "fwhm_nm": None if scene.fwhm_nm is None else float(scene.fwhm_nm[i]),
                 "scale": float(scene.scales[i]), "offset": float(scene.offsets[i]), "good": bool(scene.good_bands[i])}
                for i in range(scene.count)],
        }
        if as_json:
            typer.echo(json.dumps(facts, indent=2))
            return facts
        product = facts["product"]
        if product:
            typer.echo(f"product: {product.get('sensor', '?')} {product.get('processing_level', '')} "
                       f"{product.get('product_name', '')}; acquired {product.get('acquisition_time') or 'unknown'}")
        typer.echo(f"files: {', '.join(facts['files'])}")
        typer.echo(f"grid: {scene.width} x {scene.height} px of {scene.res[0]:g} x {scene.res[1]:g} in {facts['crs']}")
        spectral = (f"wavelengths from {scene.wavelength_source}" if scene.wavelength_source else
                    f"bands named by the product (SRF set {scene.tags['srf_sensor']})" if "srf_sensor" in scene.tags
                    else "wavelengths from nowhere (none found)")
        typer.echo(f"bands: {scene.count}; {spectral}; "
                   f"bad bands: {', '.join(map(str, facts['bad_bands'])) or 'none'}; "
                   f"quality masks: {', '.join(facts['masks']) or 'none'}")
        for row in facts["band_table"]:
            wl = f"{row['wavelength_nm']:9.2f} nm" if row["wavelength_nm"] is not None else "        - nm"
            fw = f"FWHM {row['fwhm_nm']:6.2f} nm" if row["fwhm_nm"] is not None else "FWHM      -"
            scaling = f"x {row['scale']:g} + {row['offset']:g}" if (row["scale"], row["offset"]) != (1.0, 0.0) else ""
            bad = "" if row["good"] else "  bad"
            typer.echo(f"  {row['band']:>4} {row['name'][:24]:<24} {wl}  {fw}  {scaling}{bad}")
        return facts

    run_command(action)
