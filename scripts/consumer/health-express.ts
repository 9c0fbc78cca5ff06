// @resilient/health/express, with its peer express (and @types/express).
import { healthRoutes } from '@resilient/health/express'
import express from 'express'
import { health } from './service.js'

const app = express()
app.use(healthRoutes(health))
