/**
 * Charts for studies and benchmarks: a Vega-Lite spec compiled to Vega and rendered headlessly to SVG
 * (vega's own renderer, no browser), and to PNG through resvg where a raster is wanted. The three
 * libraries load on first use: importing them costs about half a second, which every CLI command that
 * draws no chart would otherwise pay at start.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { TopLevelSpec } from 'vega-lite';

export type { TopLevelSpec } from 'vega-lite';

/** Render a Vega-Lite spec to an SVG string. */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const [vega, { compile }] = await Promise.all([import('vega'), import('vega-lite')]);
  const compiled = compile(spec).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Rasterize an SVG string to PNG bytes. */
export async function svgToPng(svg: string, opts: { width?: number } = {}): Promise<Buffer> {
  const { Resvg } = await import('@resvg/resvg-js');
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
    fs.writeFileSync(out[1]!, await svgToPng(svg));
  }
  return out;
}
