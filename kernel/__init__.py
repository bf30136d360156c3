"""The platform, with no business meaning: database base, Redis with its circuit breaker,
crypto, errors, the outbox and its topics, audit, cursors, staff, the Asia/Shanghai clock,
the StateMachine class, group commit, the PDF toolkit, nonces. Imports nothing of ours."""
