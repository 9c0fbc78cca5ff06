export {
  connectionString,
  DCS_DEFAULTS,
  etcdArgs,
  patroniConfig,
  REDIS_CLUSTER_DEFAULTS,
  type RedisAuth,
  redisArgs,
  redisClusterArgs,
  redisSecretsConf,
  SENTINEL_MASTER_NAME,
  scopeFor,
  sentinelConf,
} from './config.js'
export {
  type ClusterInfo,
  type ClusterMember,
  type FrozenMember,
  Lab,
  type LabMember,
  type LabMemberStatus,
  type LabStatus,
  logShowsDivergence,
  type PatroniAccess,
  type PostgresCredentials,
  parsePsqlOutput,
  type RedisAccess,
  type RedisAddress,
  type RedisClientAccess,
  type SentinelInfo,
  type StartMemberOptions,
  type StartMemberResult,
} from './lab.js'
export {
  ensurePackages,
  missingPackages,
  missingPackagesError,
  type Requirement,
  requirements,
} from './packages.js'
export { canListen, kernelPort, PortAllocator } from './ports.js'
export {
  type ClusterNodesEntry,
  parseClusterNodes,
  type RedisClusterFailover,
  type RedisClusterInfo,
  type RedisClusterNode,
  slotRanges,
} from './redis-cluster.js'
export { parseReply, type RedisClientOptions, RespError, type RespValue, redisCommand } from './resp.js'
export { scramVerifier } from './scram.js'
export { type LabOptions, startLab } from './start.js'
export {
  type LabState,
  parseState,
  readState,
  STATE_FILE,
  serializeState,
  statePath,
  writeState,
} from './state.js'
export {
  type CertificateAuthority,
  createCertificateAuthority,
  type IssuedCertificate,
  type IssueOptions,
  issueCertificate,
  type TlsState,
} from './tls.js'
export { isProcessAlive, waitFor } from './util.js'
