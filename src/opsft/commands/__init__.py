"""Commands: one module per `opsft` command (score, realign, train, eval, prefs, rejection, compare), each a
config dataclass (its flags) and a resumable job that is thin over the engine."""
