"""lut_db"""
