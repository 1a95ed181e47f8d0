"""Target tasks for pretrained encoders, and the low-label protocol.

* :mod:`.data` - ACDC-format NIfTI volumes and labelled knee stacks onto the pretraining grid;
* :mod:`.backbone` - random or published-pretrained encoder (+ decoder), one architecture;
* :mod:`.segmentation` - new 1x1 head, fine-tuning, native-resolution 3D Dice / HD95;
* :mod:`.classification` - MRNet-style stack classifier, AUC / accuracy;
* :mod:`.protocol` - labelled-subject counts x seeds x inits, results JSON / Markdown / PNG;
* :mod:`.cli` - ``anatplane finetune seg|cls`` (and ``launch/finetune.py``).
"""
