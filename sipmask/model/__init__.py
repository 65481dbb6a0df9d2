"""The SipMask network: ResNet backbone, FPN neck, SipMask head, and the detector that ties them together."""
