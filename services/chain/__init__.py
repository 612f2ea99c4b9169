"""On-chain licensing: the ModelLicense contract's ABI, raw JSON-RPC calls, the license
backend, signed requests and the transactions the CLI sends (see docs/LICENSING.md)."""
