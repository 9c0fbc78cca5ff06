// @resilient/health/grpc, with its peers @grpc/grpc-js and grpc-health-check.
import { Server } from '@grpc/grpc-js'
import { addHealthService } from '@resilient/health/grpc'
import { health } from './service.js'

const server = new Server()
export const registration: Disposable = addHealthService(server, health, { livenessService: 'liveness' })
