"""The runtime every sfhq-factory service shares.

Modules are imported one by one (`from services.common.queue import RedisQueue`) so that a light
process only pays for what it uses: `config`, `stages`, `images`, `blobs` and `weights`
need no Redis, no gRPC and never torch.
"""
