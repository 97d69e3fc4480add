/** A progress bar on stderr that only appears once work has run for a couple of seconds. */
import cliProgress from 'cli-progress';

export class LazyProgress {
  private bar?: cliProgress.SingleBar;
  private readonly t0 = Date.now();
  constructor(
    private readonly label: string,
    private readonly enabled = process.stderr.isTTY === true,
  ) {}

  update(done: number, total: number): void {
    if (!this.enabled) return;
    if (!this.bar) {
      if (Date.now() - this.t0 < 2000 || done >= total) return;
      this.bar = new cliProgress.SingleBar(
        {
          format: `${this.label} [{bar}] {percentage}% | {value}/{total} | eta {eta_formatted}`,
          stream: process.stderr,
          hideCursor: true,
        },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(total, done);
    }
    this.bar.setTotal(total);
    this.bar.update(done);
  }

  stop(): void {
    this.bar?.stop();
    this.bar = undefined;
  }
}
