declare module 'autocannon' {
  interface Result {
    requests: { total: number; average: number }
    errors: number
    non2xx: number
  }
  export default function autocannon(options: {
    url: string
    connections?: number
    duration?: number
  }): Promise<Result>
}
