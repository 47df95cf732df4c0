"""Runtime: what every job needs whatever it computes. Errors, the options that are both dataclass and command
line, resumable logs, the output lock, the processes of `accelerate launch`, worker pools, training checkpoints.
The bottom layer: imports nothing else of opsft."""
