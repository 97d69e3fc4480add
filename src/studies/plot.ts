/**
 * Charts for studies and benchmarks: a Vega-Lite spec compiled to Vega and rendered headlessly to SVG
 * (vega's own renderer, no browser), and to PNG through resvg where a raster is wanted.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Resvg } from '@resvg/resvg-js';
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';

export type { TopLevelSpec } from 'vega-lite';

/** Render a Vega-Lite spec to an SVG string. */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const compiled = compile(spec).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Rasterize an SVG string to PNG bytes. */
export function svgToPng(svg: string, opts: { width?: number } = {}): Buffer {
  const r = new Resvg(svg, {
    background: 'white',
    fitTo: opts.width ? { mode: 'width', value: opts.width } : { mode: 'zoom', value: 2 },
    font: { loadSystemFonts: true },
  });
  return Buffer.from(r.render().asPng());
}

/** Write `<base>.svg` (and `<base>.png` unless png=false); returns the paths written. */
export async function writeChart(spec: TopLevelSpec, base: string, opts: { png?: boolean } = {}): Promise<string[]> {
  fs.mkdirSync(path.dirname(base), { recursive: true });
  const svg = await renderSvg(spec);
  const out = [`${base}.svg`];
  fs.writeFileSync(out[0]!, svg);
  if (opts.png !== false) {
    out.push(`${base}.png`);
    fs.writeFileSync(out[1]!, svgToPng(svg));
  }
  return out;
}
