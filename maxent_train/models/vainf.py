"""VainF DeepLabV3Plus-Pytorch's ``deeplabv3plus_resnet101`` / ``deeplabv3plus_mobilenet`` as ``deeplabv3plus_resnet101_vainf`` / ``deeplabv3plus_mobilenetv2_vainf``.

(Being written: no variant registered yet.)
"""
