"""The lab: the whole study in one command (`opsft lab`), on top of the commands. Its method names (methods),
stages and profiles (study), and report (report)."""
