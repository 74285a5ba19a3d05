"""lulayer.layering"""
