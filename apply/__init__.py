"""lulayer.apply"""
