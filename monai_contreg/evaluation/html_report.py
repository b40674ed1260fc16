"""One self-contained interactive HTML report of registrations: no server, no network, the data embedded.

:func:`write_html_report` writes a single ``.html`` file holding a sortable table of the pairs (keypoint TRE where
keypoints exist, the landmark-free estimate of :mod:`monai_contreg.evaluation.quality` always) and, per pair,
three orthogonal planes of the coarse quality grid (~3 mm), each with a slider through its slices, in five views:
fixed / warped overlay (fixed in magenta, warped moving in green: grey where they agree), checkerboard,
absolute difference, Jacobian determinant (blue < 1 < red, white = 1) and the residual-shift error map (mm).

The volumes travel as zlib-compressed uint8 arrays in base64 (decompressed by the browser's
``DecompressionStream``, drawn on ``<canvas>`` elements). Each canvas carries ``data-axis``, ``data-slice`` and
``data-view`` attributes saying what it shows (the browser test reads them and the drawn pixels).
"""

from __future__ import annotations

import base64
import html
import json
import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserInputError
from ..io.atomic import atomic_path

__all__ = ["JACOBIAN_RANGE", "RESIDUAL_RANGE_MM", "encode_volume", "evaluation_html_report", "write_html_report"]

#: det J shown from 0 (blue) through 1 (white) to this value (red).
JACOBIAN_RANGE = 2.0
#: Residual-shift map shown from 0 to this many mm.
RESIDUAL_RANGE_MM = 8.0


def encode_volume(vol: np.ndarray, lo: float, hi: float) -> dict[str, Any]:
    """``vol`` ``(H, W, D)`` mapped linearly from ``[lo, hi]`` onto uint8 0-255 (clipped), C order, zlib, base64."""
    v = np.asarray(vol, dtype=np.float32)
    q = np.clip(np.round((v - lo) / max(hi - lo, 1e-12) * 255.0), 0, 255).astype(np.uint8)
    return {"shape": [int(s) for s in q.shape], "data": base64.b64encode(zlib.compress(q.tobytes(order="C"), 6)).decode("ascii")}


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return f"{v:.{nd}f}" if isinstance(v, float) else html.escape(str(v))


def _pair_payload(entry: dict[str, Any]) -> dict[str, Any]:
    q = entry["quality"]
    maps = getattr(q, "maps", None) if not isinstance(q, dict) else q.get("maps")
    if maps is None:
        raise UserInputError(f"write_html_report: pair {entry['name']!r}: its quality report has no maps (estimate_quality(..., keep_maps=True)).")
    return {
        "name": str(entry["name"]),
        "spacing": list(getattr(q, "coarse_spacing", None) or (1.0, 1.0, 1.0)),
        "volumes": {
            "fixed": encode_volume(maps["fixed"], 0.0, 1.0),
            "warped": encode_volume(maps["warped"], 0.0, 1.0),
            "jacobian": encode_volume(maps["jacobian"], 0.0, JACOBIAN_RANGE),
            "residual": encode_volume(maps["residual_mm"], 0.0, RESIDUAL_RANGE_MM),
        },
    }


_COLUMNS = (("pair", "pair"), ("tre", "TRE mm (keypoints)"), ("tre0", "TRE before mm"), ("est", "estimated error mm"),
            ("interval", "interval mm"), ("verdict", "verdict"), ("mind", "MIND ratio"), ("residual", "residual mm"),
            ("dice", "Dice"), ("sdlogj", "SDlogJ"), ("folding", "folding %"))


def _row(entry: dict[str, Any], i: int) -> str:
    q = entry["quality"]
    d = q.to_dict() if hasattr(q, "to_dict") else q
    s = d["signals"]
    vals = {
        "pair": entry["name"], "tre": entry.get("tre_mm"), "tre0": entry.get("tre_initial_mm"),
        "est": d["estimated_error_mm"], "interval": f"{d['interval_mm'][0]:.2f}-{d['interval_mm'][1]:.2f}",
        "verdict": d["verdict"], "mind": s.get("mind_ratio"), "residual": s.get("residual_mm"), "dice": s.get("dice"),
        "sdlogj": s.get("sdlogj"), "folding": s.get("folding_percent"),
    }
    cells = []
    for key, _ in _COLUMNS:
        v = vals[key]
        sort = "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else (v if isinstance(v, (int, float)) else str(v))
        text = f'<a href="#pair{i}">{html.escape(str(v))}</a>' if key == "pair" else _fmt(v)
        cls = f' class="v-{d["verdict"]}"' if key == "verdict" else ""
        cells.append(f'<td data-sort="{html.escape(str(sort))}"{cls}>{text}</td>')
    return "<tr>" + "".join(cells) + "</tr>"


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
table{border-collapse:collapse;margin-bottom:2em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{cursor:pointer;background:#eee;user-select:none}td:first-child{text-align:left}
.v-ok{background:#d9f2d9}.v-check{background:#fff2c2}.v-failed{background:#f7c6c6}
.pair{border-top:2px solid #888;padding-top:.6em;margin-top:1.2em}.planes{display:flex;gap:14px;flex-wrap:wrap}
.plane{display:flex;flex-direction:column;align-items:center}canvas{image-rendering:pixelated;border:1px solid #999;background:#000}
.note{color:#555;font-size:90%}
"""

_JS = r"""
const PAIRS = JSON.parse(document.getElementById('payload').textContent);
const VIEWS = ['overlay','checkerboard','difference','jacobian','error'];
async function inflate(b64){
  const bin = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const ds = new DecompressionStream('deflate');
  const buf = await new Response(new Blob([bin]).stream().pipeThrough(ds)).arrayBuffer();
  return new Uint8Array(buf);
}
function planeDims(shape, axis){ // rows: the higher remaining axis reversed (superior up); columns: the lower one
  const rest = [0,1,2].filter(a => a !== axis);
  return {colAxis: rest[0], rowAxis: rest[1], w: shape[rest[0]], h: shape[rest[1]]};
}
function voxel(vol, shape, ijk){ return vol[(ijk[0]*shape[1] + ijk[1])*shape[2] + ijk[2]]; }
function colour(view, f, w, jac, err, r, c){
  if(view==='overlay') return [f, w, f];
  if(view==='checkerboard'){ const t = ((Math.floor(r/8) + Math.floor(c/8)) % 2) ? w : f; return [t,t,t]; }
  if(view==='difference'){ const d = Math.abs(f - w); return [d,d,d]; }
  if(view==='jacobian'){ // 0 blue, 127.5 (det 1) white, 255 red
    if(jac < 127.5){ const t = jac/127.5; return [255*t, 255*t, 255]; }
    const t = (255 - jac)/127.5; return [255, 255*t, 255*t]; }
  const e = err; return [Math.min(255, 3*e), Math.max(0, Math.min(255, 3*e - 255)), Math.max(0, 3*e - 510)];
}
function draw(p, axis){
  const P = PAIRS[p], shape = P.volumes.fixed.shape;
  const cv = document.getElementById(`cv-${p}-${axis}`), sl = document.getElementById(`sl-${p}-${axis}`);
  const view = document.querySelector(`input[name=view-${p}]:checked`).value;
  const s = parseInt(sl.value), d = planeDims(shape, axis);
  const ctx = cv.getContext('2d'), img = ctx.createImageData(d.w, d.h);
  for(let r = 0; r < d.h; r++){ for(let c = 0; c < d.w; c++){
    const ijk = [0,0,0]; ijk[axis] = s; ijk[d.colAxis] = c; ijk[d.rowAxis] = d.h - 1 - r;
    const rgb = colour(view, voxel(P.arr.fixed, shape, ijk), voxel(P.arr.warped, shape, ijk),
                       voxel(P.arr.jacobian, shape, ijk), voxel(P.arr.residual, shape, ijk), r, c);
    const o = 4*(r*d.w + c); img.data[o] = rgb[0]; img.data[o+1] = rgb[1]; img.data[o+2] = rgb[2]; img.data[o+3] = 255; }}
  ctx.putImageData(img, 0, 0);
  cv.dataset.slice = String(s); cv.dataset.view = view;
  document.getElementById(`lb-${p}-${axis}`).textContent = `axis ${axis}: slice ${s + 1} / ${shape[axis]}`;
}
async function init(){
  for(let p = 0; p < PAIRS.length; p++){
    const P = PAIRS[p]; P.arr = {};
    for(const k of Object.keys(P.volumes)) P.arr[k] = await inflate(P.volumes[k].data);
    const shape = P.volumes.fixed.shape;
    for(let axis = 0; axis < 3; axis++){
      const d = planeDims(shape, axis), cv = document.getElementById(`cv-${p}-${axis}`);
      cv.width = d.w; cv.height = d.h;
      const sc = 3, sp = P.spacing; cv.style.width = `${d.w*sc*sp[d.colAxis]/sp[0]}px`; cv.style.height = `${d.h*sc*sp[d.rowAxis]/sp[0]}px`;
      const sl = document.getElementById(`sl-${p}-${axis}`);
      sl.max = shape[axis] - 1; sl.value = Math.floor(shape[axis] / 2);
      sl.addEventListener('input', () => draw(p, axis));
      draw(p, axis);
    }
    document.querySelectorAll(`input[name=view-${p}]`).forEach(el => el.addEventListener('change', () => {for(let a=0;a<3;a++) draw(p, a);}));
  }
  document.body.dataset.ready = '1';
}
document.querySelectorAll('th').forEach((th, col) => th.addEventListener('click', () => {
  const tb = th.closest('table').tBodies[0], rows = Array.from(tb.rows);
  const asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
  rows.sort((a, b) => { const x = a.cells[col].dataset.sort, y = b.cells[col].dataset.sort;
    const nx = parseFloat(x), ny = parseFloat(y);
    const cmp = (x === '' ) - (y === '') || (isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny);
    return asc ? cmp : -cmp; });
  rows.forEach(r => tb.appendChild(r));
}));
init();
"""


def write_html_report(path: str | Path, entries: Sequence[dict[str, Any]], title: str = "contreg report") -> Path:
    """Write the report (atomically) and return its path.

    Args:
        path: the ``.html`` file.
        entries: one dict per pair: ``name``; ``quality``: a :class:`~monai_contreg.evaluation.quality.QualityReport`
            made with ``keep_maps=True``; optional ``tre_mm`` / ``tre_initial_mm`` (keypoint TRE after / before).
        title: page title.

    Raises:
        UserInputError: no entries, or an entry without maps.
    """
    if not entries:
        raise UserInputError("write_html_report: no pairs to report.")
    payload = [_pair_payload(e) for e in entries]
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in _COLUMNS)
    rows = "".join(_row(e, i) for i, e in enumerate(entries))
    sections = []
    for i, e in enumerate(entries):
        views = "".join(
            f'<label><input type="radio" name="view-{i}" value="{v}"{" checked" if v == "overlay" else ""}> {v}</label> '
            for v in ("overlay", "checkerboard", "difference", "jacobian", "error")
        )
        planes = "".join(
            f'<div class="plane"><canvas id="cv-{i}-{a}" data-axis="{a}" data-slice="" data-view=""></canvas>'
            f'<input type="range" id="sl-{i}-{a}" min="0" value="0" step="1"><span id="lb-{i}-{a}"></span></div>'
            for a in range(3)
        )
        q = e["quality"]
        line = html.escape(q.line() if hasattr(q, "line") else str(q.get("verdict")))
        sections.append(f'<div class="pair" id="pair{i}"><h3>{html.escape(str(e["name"]))}</h3><p class="note">{line}</p>'
                        f'<p>{views}</p><div class="planes">{planes}</div></div>')
    doc = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>"
        "<p class='note'>Estimated error: a model calibrated on synthetic pairs with known answers, not a measurement "
        "(docs/guides/quality.md). Views on the ~3 mm quality grid: overlay (fixed magenta, warped green), checkerboard, "
        f"|fixed - warped|, Jacobian determinant (blue 0, white 1, red {JACOBIAN_RANGE:g}), error map (residual shift, "
        f"black 0 to white {RESIDUAL_RANGE_MM:g} mm). Click a column to sort.</p>"
        f"<table id='pairs'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>{''.join(sections)}"
        f"<script type='application/json' id='payload'>{json.dumps(payload)}</script><script>{_JS}</script></body></html>"
    )
    out = Path(path)
    with atomic_path(out) as tmp:
        tmp.write_text(doc, encoding="utf-8")
    return out


def evaluation_html_report(dataset, fields, path: str | Path, split: str = "val", results: dict[str, Any] | None = None,
                           on_case=None) -> Path:
    """The report of a Learn2Reg split's fields (``contreg evaluate ... --html``): every pair's landmark-free
    estimate (:func:`~monai_contreg.evaluation.quality.estimate_quality` with its maps) and, where the
    evaluation ``results`` have it, its keypoint TRE after and before.

    Args:
        dataset: a :class:`~monai_contreg.data.learn2reg.Learn2RegDataset` (or its folder / description file).
        fields: folder of fields or a submission zip.
        path: the ``.html`` file.
        split: split name or alias.
        results: :func:`~monai_contreg.evaluation.learn2reg.evaluate_learn2reg` output (for the TRE columns).
        on_case: called with the pair key after each pair.
    """
    from ..data.learn2reg import Learn2RegDataset, locate_fields
    from .learn2reg import fields_folder
    from .quality import estimate_quality

    ds = dataset if isinstance(dataset, Learn2RegDataset) else Learn2RegDataset(dataset)
    pairs = ds.pairs(split)
    cases = (results or {}).get("cases", {})
    entries = []
    with fields_folder(fields) as folder:
        found = locate_fields(pairs, folder)
        for pair in pairs:
            rep = estimate_quality(pair.fixed, pair.moving, field_path=found[pair.key], fixed_mask=pair.fixed_mask,
                                   moving_mask=pair.moving_mask, keep_maps=True)
            c = cases.get(pair.key, {})
            entries.append({"name": pair.key, "quality": rep,
                            "tre_mm": c.get("TRE_kp", {}).get("mean"), "tre_initial_mm": c.get("TRE_kp_initial", {}).get("mean")})
            if on_case is not None:
                on_case(pair.key)
    return write_html_report(path, entries, title=f"{ds.name} {ds.resolve_split(split)}: {len(entries)} pairs")
