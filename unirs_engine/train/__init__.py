"""Training stages on accelerate: align (demo stage 0), cem (Chg2Cap-style CEM pretraining),
instruct (joint instruction tuning). Entry points: train.align.train_align, train.cem_pretrain.train_cem,
train.instruct.train_instruct, each taking a train.config stage config; CLI in train.command.

Kept free of imports so that `unirs --help` does not load torch through this package.
"""
