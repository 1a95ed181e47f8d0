"""``anatplane export``: our weights and data in the formats other tools train with.

* ``--format nnunet`` (:mod:`.nnunet_weights`): a checkpoint ``nnUNetv2_train ... -pretrained_weights``
  loads, from a run directory or a published model pretrained with ``model.name=nnunet``;
* ``--format nnunet-dataset`` (:mod:`.nnunet_dataset`): an ACDC-format cohort as an nnU-Net raw
  dataset (``imagesTr``, ``labelsTr``, ``dataset.json``).
"""
