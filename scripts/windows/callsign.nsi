; The Windows installer, built on Linux by scripts/windows/package with Debian's makensis.
;
; Why NSIS rather than an MSI (msitools' wixl): a per-user install with no administrator
; rights, a Start-menu entry, the CLI on the user's PATH and a clean uninstall are all a few
; lines here, and `/S` installs and uninstalls silently for tests; wixl's per-user MSIs need
; workarounds for the PATH and the Start menu.
;
; Per user: everything goes under %LOCALAPPDATA%\Programs\Callsign and HKCU, so no UAC prompt.
; No firewall rule: adding one needs administrator rights. Windows asks once, the first time
; the app listens for peers ("Allow access"); docs/windows.md explains the prompt.
;
; makensis -DVERSION=0.1.0 -DSTAGE=dir-with-the-exes -DOUT=installer.exe callsign.nsi

; 64-bit, like the app (and Wine64, which CI installs it with, runs no 32-bit programs).
Target amd64-unicode
!include "WordFunc.nsh"
!include "WinMessages.nsh"

!ifndef VERSION
  !error "pass -DVERSION=x.y.z"
!endif
!ifndef STAGE
  !error "pass -DSTAGE=the directory holding callsign.exe, callsign-gui.exe, callsign-relay.exe"
!endif
!ifndef OUT
  !define OUT "callsign-${VERSION}-windows-x86_64-setup.exe"
!endif

!define UNINSTALL_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\Callsign"

Name "Callsign ${VERSION}"
OutFile "${OUT}"
Icon "assets\callsign.ico"
UninstallIcon "assets\callsign.ico"
RequestExecutionLevel user
InstallDir "$LOCALAPPDATA\Programs\Callsign"
SetCompressor /SOLID lzma
VIProductVersion "${VERSION}.0"
VIAddVersionKey "ProductName" "Callsign"
VIAddVersionKey "FileDescription" "Callsign push-to-talk voice"
VIAddVersionKey "FileVersion" "${VERSION}"
VIAddVersionKey "ProductVersion" "${VERSION}"
VIAddVersionKey "LegalCopyright" "MIT OR Apache-2.0"

Page directory
Page instfiles
UninstPage uninstConfirm
UninstPage instfiles

Section "Callsign"
  SetShellVarContext current
  SetOutPath "$INSTDIR"
  File "${STAGE}\callsign-gui.exe"
  File "${STAGE}\callsign.exe"
  File "${STAGE}\callsign-relay.exe"
  File "assets\callsign.ico"
  File "${STAGE}\README.txt"
  WriteUninstaller "$INSTDIR\uninstall.exe"

  CreateShortCut "$SMPROGRAMS\Callsign.lnk" "$INSTDIR\callsign-gui.exe" "" "$INSTDIR\callsign.ico"

  ; Apps & features (per user).
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayName" "Callsign"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "Publisher" "Callsign"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayIcon" "$INSTDIR\callsign.ico"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "UninstallString" '"$INSTDIR\uninstall.exe"'
  WriteRegStr HKCU "${UNINSTALL_KEY}" "QuietUninstallString" '"$INSTDIR\uninstall.exe" /S'
  WriteRegDWORD HKCU "${UNINSTALL_KEY}" "NoModify" 1
  WriteRegDWORD HKCU "${UNINSTALL_KEY}" "NoRepair" 1

  ; The CLI on the user's PATH (HKCU\Environment), once.
  ReadRegStr $0 HKCU "Environment" "Path"
  ${WordFind} "$0" "$INSTDIR" "E+1{" $1
  IfErrors 0 path_done
    StrCmp $0 "" 0 +3
      WriteRegExpandStr HKCU "Environment" "Path" "$INSTDIR"
      Goto path_told
    WriteRegExpandStr HKCU "Environment" "Path" "$0;$INSTDIR"
  path_told:
    SendMessage ${HWND_BROADCAST} ${WM_WININICHANGE} 0 "STR:Environment" /TIMEOUT=500
  path_done:
SectionEnd

Section "Uninstall"
  SetShellVarContext current
  Delete "$SMPROGRAMS\Callsign.lnk"
  Delete "$INSTDIR\callsign-gui.exe"
  Delete "$INSTDIR\callsign.exe"
  Delete "$INSTDIR\callsign-relay.exe"
  Delete "$INSTDIR\callsign.ico"
  Delete "$INSTDIR\README.txt"
  Delete "$INSTDIR\uninstall.exe"
  RMDir "$INSTDIR"
  ; Programs\ too if we made it and nothing else is installed there (RMDir leaves a full one).
  RMDir "$LOCALAPPDATA\Programs"
  DeleteRegKey HKCU "${UNINSTALL_KEY}"

  ; Take the install directory off PATH, wherever it sits in the list.
  ReadRegStr $0 HKCU "Environment" "Path"
  ${un.WordReplace} "$0" ";$INSTDIR" "" "+" $0
  ${un.WordReplace} "$0" "$INSTDIR;" "" "+" $0
  ${un.WordReplace} "$0" "$INSTDIR" "" "+" $0
  WriteRegExpandStr HKCU "Environment" "Path" "$0"
  SendMessage ${HWND_BROADCAST} ${WM_WININICHANGE} 0 "STR:Environment" /TIMEOUT=500
  ; The user's profile, keys and logs stay (%APPDATA%\Callsign, %LOCALAPPDATA%\Callsign):
  ; an identity key is not the installer's to delete.
SectionEnd
