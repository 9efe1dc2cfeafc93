<?php
// The request body's length on a line, then the body itself.
$body = file_get_contents('php://input');
header('Content-Type: application/octet-stream');
echo strlen($body), "\n", $body;
