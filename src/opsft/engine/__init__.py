"""Engine: batched model work over the methods. Scoring, decoding (generation, Hinted Decoding), the trainers and
their TRL/PEFT setup, own samples, evaluation and drift. The layer the public Python API exposes."""
