"""The SipMask model: ResNet backbone, FPN neck, SipMask head, FCOS targets, losses and postprocess, and the detector that ties them together."""
