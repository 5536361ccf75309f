"""Training stages on accelerate: vision (the demo's tower, projector and CEM), align (demo stage 0),
cem (Chg2Cap-style CEM pretraining), instruct (joint instruction tuning), change-score (the review's
score head). Entry points: train_vision (vision_pretrain), train_align, train_cem (cem_pretrain),
train_instruct, train_change_score, each taking a train.config stage config; CLI in train.command.

Kept free of imports so that `unirs --help` does not load torch through this package.
"""
