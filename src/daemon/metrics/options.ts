/**
 * --metrics addr.type=inet,addr.host=H,addr.port=P | addr.type=unix,addr.path=P
 * (also "metrics" in a config file): where the /metrics endpoint listens.
 * The address is qsd's SocketAddress, as --nbd-server takes it.
 */
import { obj, req, type ObjectType } from '../../qapi/types.ts';
import { SocketAddress, type SocketAddressValue } from '../../qapi/sockets.ts';

export const MetricsOptions: ObjectType = obj('MetricsOptions', [
  req('addr', SocketAddress, 'where the HTTP endpoint serving /metrics listens (inet or unix)'),
]);

export interface MetricsOptionsValue { addr: SocketAddressValue }
