"""lulayer.rpmdb"""
