/**
 * Stop strings over streamed text: emits text as soon as it can no longer be the start of a stop
 * string, and reports where the first stop string begins.
 */
export class StopMatcher {
  private text = '';
  private emitted = 0;
  constructor(private readonly stops: string[]) {}

  /** Add decoded text; returns what is safe to emit and whether a stop string was hit. */
  push(delta: string): { emit: string; stopped: boolean } {
    this.text += delta;
    for (const s of this.stops) {
      const i = this.text.indexOf(s, Math.max(0, this.emitted - s.length + 1));
      if (s.length > 0 && i >= 0) {
        const emit = this.text.slice(this.emitted, Math.max(this.emitted, i));
        this.text = this.text.slice(0, i);
        this.emitted = this.text.length;
        return { emit, stopped: true };
      }
    }
    // Hold back the longest suffix that is a prefix of some stop string.
    let hold = 0;
    for (const s of this.stops) {
      for (let n = Math.min(s.length - 1, this.text.length - this.emitted); n > hold; n--) {
        if (this.text.endsWith(s.slice(0, n))) {
          hold = n;
          break;
        }
      }
    }
    const upto = this.text.length - hold;
    const emit = this.text.slice(this.emitted, upto);
    this.emitted = upto;
    return { emit, stopped: false };
  }

  /** Everything not yet emitted (at the end of generation). */
  flush(): string {
    const emit = this.text.slice(this.emitted);
    this.emitted = this.text.length;
    return emit;
  }

  /** The full text, stop string excluded. */
  get fullText(): string {
    return this.text;
  }
}
