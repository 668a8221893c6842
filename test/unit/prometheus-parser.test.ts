/** The strict exposition parser the /metrics tests use (test/helpers/prometheus.ts) refuses what Prometheus would. */
import { describe, expect, it } from 'vitest';
import { parsePrometheusText, sampleValue } from '../helpers/prometheus.ts';

const GOOD = `# HELP a_total Things.
# TYPE a_total counter
a_total{x="1",y="q\\"uote"} 3
a_total{x="2"} 4.5e3
# TYPE h histogram
h_bucket{le="0.5"} 1
h_bucket{le="+Inf"} 2
h_sum 0.7
h_count 2
# TYPE g gauge
g NaN
`;

describe('parsePrometheusText', () => {
  it('reads families, labels with escapes and values', () => {
    const f = parsePrometheusText(GOOD);
    expect(sampleValue(f, 'a_total', 'a_total', { x: '1', y: 'q"uote' })).toBe(3);
    expect(sampleValue(f, 'a_total', 'a_total', { x: '2' })).toBe(4500);
    expect(f.get('h')!.samples).toHaveLength(4);
    expect(f.get('a_total')!.help).toBe('Things.');
  });

  it.each([
    ['no final newline', GOOD.trimEnd()],
    ['a sample of no family', `${GOOD}b 1\n`],
    ['a series twice', GOOD.replace('a_total{x="2"}', 'a_total{x="1",y="q\\"uote"}')],
    ['a bad value', GOOD.replace('4.5e3', '4,5')],
    ['a bad escape', GOOD.replace('q\\"uote', 'q\\tuote')],
    ['an unquoted label', GOOD.replace('x="2"', 'x=2')],
    ['a negative counter', GOOD.replace(' 3\n', ' -3\n')],
    ['non-cumulative buckets', GOOD.replace('h_bucket{le="+Inf"} 2', 'h_bucket{le="+Inf"} 0').replace('h_count 2', 'h_count 0')],
    ['a count unlike +Inf', GOOD.replace('h_count 2', 'h_count 3')],
    ['no +Inf bucket', GOOD.replace('h_bucket{le="+Inf"} 2\n', '')],
    ['TYPE after samples', `${GOOD}# TYPE g gauge\n`],
    ['a bad type', GOOD.replace('# TYPE g gauge', '# TYPE g meter')],
    ['garbage', `${GOOD}{x="1"} 2\n`],
  ])('refuses %s', (_what, text) => {
    expect(() => parsePrometheusText(text)).toThrow();
  });
});
