/**
 * The fixed Redis endpoint: a tiny TCP proxy on a port of its own that connects each new client
 * to the server lab.json names as the Redis primary (`redisPrimary`). It stands for a managed
 * service's primary endpoint (Memorystore standard tier, ElastiCache's primary endpoint): after
 * a failover the same address reaches the new primary, for new connections. A connection made
 * before keeps its server (now a replica answering READONLY to writes) until it is closed;
 * SIGUSR2 closes them all (a provider that drops connections at a failover).
 *
 * It runs as a process of its own (plain CommonJS, `node <lab>/redis-endpoint/endpoint.cjs`),
 * not inside the process that started the lab, so that it works the same for a CLI lab and for
 * a lab driven from another process (Lab.fromState): whoever changes `redisPrimary` in lab.json
 * re-points it. It exits by itself when lab.json disappears.
 */
export const ENDPOINT_SOURCE = `
const fs = require('node:fs')
const net = require('node:net')
const stateFile = process.argv[2]
const port = Number(process.argv[3])
const open = new Set()
function target() {
  const s = JSON.parse(fs.readFileSync(stateFile, 'utf8'))
  const node = s.redis.find((r) => r.name === s.redisPrimary) || s.redis[0]
  return node.port
}
const server = net.createServer((client) => {
  let to
  try { to = target() } catch (e) { console.error('no target: ' + e.message); client.destroy(); return }
  const upstream = net.connect({ host: '127.0.0.1', port: to })
  const pair = { client, upstream }
  open.add(pair)
  const close = () => { open.delete(pair); client.destroy(); upstream.destroy() }
  client.on('error', close)
  upstream.on('error', close)
  client.on('close', close)
  upstream.on('close', close)
  client.setNoDelay(true)
  upstream.setNoDelay(true)
  client.pipe(upstream)
  upstream.pipe(client)
})
server.on('error', (e) => { console.error('endpoint: ' + e.message); process.exit(1) })
server.listen({ port, host: '127.0.0.1', exclusive: true }, () => console.log('endpoint listening on 127.0.0.1:' + port))
process.on('SIGUSR2', () => {
  console.log('dropping ' + open.size + ' connection(s)')
  for (const p of open) { p.client.destroy(); p.upstream.destroy() }
})
setInterval(() => { if (!fs.existsSync(stateFile)) process.exit(0) }, 1000)
`
