"""The parts of student training, one concern a module; the ``train`` stage itself is :mod:`advdistill.train`.

- :mod:`.tokens`: prompt/response token ids with the prompt masked, and right padding;
- :mod:`.groups`: the kept groups of a scored table, the SFT baseline's best responses, the validation split;
- :mod:`.collators`: micro-batches of pairs (SFT) or of whole groups (AdvDistill), `per_device_batch_size` prompts;
- :mod:`.student`: loading the student in its training precision, the student with its fused loss as one
  module, and saving it;
- :mod:`.trainer`: the Hugging Face ``Trainer`` subclass, its arguments, and training with resumption;
- :mod:`.checkpoints`: what a run's checkpoints depend on, its clock across resumed segments, incomplete ones.
"""
