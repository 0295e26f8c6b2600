"""SML's ``DeepR101V3PlusD_OS8`` as ``deeplabv3plus_resnet101_sml``.

(Being written: no variant registered yet.)
"""
