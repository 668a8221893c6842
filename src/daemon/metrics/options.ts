/**
 * --metrics addr.type=inet,addr.host=H,addr.port=P | addr.type=unix,addr.path=P
 * (also "metrics" in a config file): where the /metrics endpoint listens.
 * The address is written as qsd's SocketAddress, with only the members the
 * endpoint acts on (a TCP host and port, a Unix path): anything else is
 * refused by the schema rather than accepted and ignored.
 */
import { enm, obj, req, type ObjectType } from '../../qapi/types.ts';

const MetricsInetAddress = obj('MetricsInetAddress', [
  req('host', 'str', 'host part of the address (an IP address or a name; empty: every address)'),
  req('port', 'str', 'port part of the address (0: any free port, logged at start)'),
]);
const MetricsUnixAddress = obj('MetricsUnixAddress', [req('path', 'str', 'filesystem path of the socket')]);

const MetricsAddress = obj('MetricsAddress', [req('type', enm('MetricsAddressType', ['inet', 'unix']), 'transport type')], {
  union: { discriminator: 'type', variants: { inet: MetricsInetAddress, unix: MetricsUnixAddress } },
});

export const MetricsOptions: ObjectType = obj('MetricsOptions', [
  req('addr', MetricsAddress, 'where the HTTP endpoint serving /metrics listens'),
]);

export interface MetricsOptionsValue { addr: { type: 'inet'; host: string; port: string } | { type: 'unix'; path: string } }
