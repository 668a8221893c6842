/**
 * The proxy for a URL, taken from the environment as libcurl (and so QEMU's
 * curl driver) takes it: `http_proxy` (lower case only) for http URLs,
 * `https_proxy`/`HTTPS_PROXY` for https, then `all_proxy`/`ALL_PROXY`;
 * `no_proxy`/`NO_PROXY` lists hosts (and their subdomains) reached directly,
 * `*` meaning all. A proxy without a scheme is an http:// one.
 */
export function proxyFor(url: URL, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const scheme = url.protocol.replace(/:$/, '');
  const own = scheme === 'http' ? env.http_proxy : env[`${scheme}_proxy`] ?? env[`${scheme.toUpperCase()}_PROXY`];
  const proxy = own || env.all_proxy || env.ALL_PROXY;
  if (!proxy) return undefined;
  if (noProxy(url.hostname, env.no_proxy ?? env.NO_PROXY ?? '')) return undefined;
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(proxy) ? proxy : `http://${proxy}`;
}

function noProxy(host: string, list: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  for (const raw of list.split(',')) {
    const e = raw.trim().toLowerCase().replace(/^\./, '');
    if (e === '') continue;
    if (e === '*' || h === e || h.endsWith(`.${e}`)) return true;
  }
  return false;
}
